"""CPU per request of the limit and budget checks: `LimitPolicy.admit` + `settle`, in process.

The principal carries everything at once: six limits on the user and six on the key, a
user and a key budget, and prepaid credits, so one admission checks twelve GCRA states and
three spend rules and reserves on two scopes. The counters live in the in-process backend
(`MemoryBackend`), as in `spendgate serve` without Redis. The figure is CPU time
(`time.process_time`) over many requests, divided by their number.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import orjson

from spendgate.keys.principals import Principal
from spendgate.ledger.records import KeyRecord, UserRecord
from spendgate.limits.memory import MemoryBackend
from spendgate.limits.names import LIMIT_WINDOWS
from spendgate.limits.policy import LimitPolicy
from spendgate.metering.pricing import PriceBook
from spendgate.metering.usage import Usage
from spendgate.proxy.rewrite import prepare_request

BIG = 10**11  # limits and money far out of reach: every request is admitted


@dataclass(frozen=True)
class Configuration:
    """What one benchmarked principal is subject to."""

    name: str
    user_limits: tuple[str, ...] = ()
    key_limits: tuple[str, ...] = ()
    user_budget: bool = False
    key_budget: bool = False
    credits: bool = False
    models: bool = False


CONFIGURATIONS = (
    Configuration(
        "everything: 6 user + 6 key limits, user and key budgets, credits, allow-list",
        tuple(LIMIT_WINDOWS), tuple(LIMIT_WINDOWS), True, True, True, True,
    ),
    Configuration(
        "typical: key requests_per_minute + tokens_per_minute, user budget, credits",
        (), ("requests_per_minute", "tokens_per_minute"), True, False, True, False,
    ),
    Configuration("nothing configured"),
)  # fmt: skip


def _limits(names: tuple[str, ...], step: int) -> dict[str, int]:
    """Limits out of reach, each a different number (as real limits are: few ties)."""
    return {name: BIG * (i * step + 1) for i, name in enumerate(names)}


def _principal(config: Configuration) -> Principal:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    money = Decimal(BIG)
    user = UserRecord(
        id=1, name="bench", email=None,
        budget_usd=money if config.user_budget else None, budget_period="monthly",
        limits=_limits(config.user_limits, 1), disabled=False, created_at=created,
        credit_usd=money if config.credits else None,
    )  # fmt: skip
    key = KeyRecord(
        id=1, user_id=1, user="bench", key_hash="h", display="sg-bench", note=None,
        created_at=created, revoked_at=None, expires_at=None,
        models=["gpt-4o*"] if config.models else None,
        budget_usd=money if config.key_budget else None, budget_period="daily",
        limits=_limits(config.key_limits, 2), last_used_at=None,
    )  # fmt: skip
    return Principal(key=key, user=user)


async def _run(principal: Principal, requests: int) -> float:
    async def nothing_before(scope: str, since: date | None) -> int:
        return 0

    backend = MemoryBackend(nothing_before, reservation_ttl_ns=900 * 10**9)
    policy = LimitPolicy(backend, PriceBook({}), default_max_tokens=4096)
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    )
    request = prepare_request(
        "chat/completions", "POST", b"application/json", body,
        default_model=None, end_user_header=None,
    )  # fmt: skip
    usage = Usage(prompt_tokens=9, completion_tokens=16, total_tokens=25)
    cost = Decimal("0.0000108")
    for _ in range(1000):  # warm the caches (prices, rules, baselines)
        await policy.settle(principal, await policy.admit(principal, request), usage, cost)
    start = time.process_time()
    for _ in range(requests):
        await policy.settle(principal, await policy.admit(principal, request), usage, cost)
    return (time.process_time() - start) / requests * 1e6


def measure(requests: int = 100_000) -> list[tuple[str, float]]:
    """µs of CPU per request for each configuration: the best of three rounds of `requests`."""
    return [
        (config.name, min(asyncio.run(_run(_principal(config), requests)) for _ in range(3)))
        for config in CONFIGURATIONS
    ]


def report_lines(results: list[tuple[str, float]], requests: int) -> list[str]:
    """The markdown section for RESULTS.md."""
    lines = [
        "| principal | CPU µs per request (admit + settle) |",
        "|---|---:|",
        *(f"| {name} | {us:.1f} |" for name, us in results),
        "",
        f"`LimitPolicy.admit` + `settle` against the in-process backend, {requests:,} requests "
        "per round, best of 3 rounds (`time.process_time`); run alone with "
        "`.venv/bin/python bench/admission.py`. Target: under 30 µs.",
    ]
    return lines


if __name__ == "__main__":
    print("\n".join(report_lines(measure(), 100_000)))
