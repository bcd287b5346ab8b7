"""What the benchmark measures: one `TargetDef` per system under test, listed in `TARGETS`.

A target starts its processes in a work directory and hands back a `Running`: the URL wrk
loads, the Authorization header, the `gateway` process (None when there is none) and the
`upstream` process (the fake), whose CPU is measured separately. `finish()` stops it and may
return a `Check` (spendgate verifies its ledger). To add a target — (b) a bare pass-through
proxy, (d) spendgate on PostgreSQL + Redis, (e) LiteLLM — write a `start_*` function and
append a `TargetDef`; the harness, table and ratios pick it up.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from procs import LOOPBACK, BenchError, Server, free_port, loopback_json
from spendgate.config import Settings
from spendgate.keys.material import display_key, hash_key, new_key
from spendgate.ledger.engine import create_engine, normalize_database_url, upgrade
from spendgate.ledger.reports import UsageFilter, usage_report
from spendgate.ledger.store import Store
from spendgate.limits.names import LIMIT_WINDOWS

CHAT_PATH = "/v1/chat/completions"


@dataclass
class Check:
    """A correctness check run when a target finishes."""

    ok: bool
    lines: list[str]


@dataclass
class Running:
    """A started target. `completed`/`cut_allowance` are filled in by the harness."""

    name: str
    url: str  # what wrk loads
    auth: str  # the Authorization header value
    gateway: Server | None
    upstream: Server
    upstream_base: str  # the fake's base URL, ".../v1"
    finisher: Callable[[Running], Check | None] | None = None
    completed: int = 0  # wrk's completed responses, summed over every run incl. warm-ups
    cut_allowance: int = 0  # connections summed over runs: at most this many cut in flight
    servers: list[Server] = field(default_factory=list)

    def finish(self) -> Check | None:
        """Stop gracefully (gateway first, so it drains), run the target's check."""
        check = self.finisher(self) if self.finisher is not None else None
        for server in reversed(self.servers):
            server.stop()
        return check

    def kill(self) -> None:
        for server in self.servers:
            server.kill()


@dataclass(frozen=True)
class TargetDef:
    name: str
    description: str
    start: Callable[[Path], Running]


def start_fake(work: Path, name: str) -> tuple[Server, str]:
    """A fake upstream on a free loopback port; returns it and its base URL (".../v1")."""
    argv = [sys.executable, "-m", "spendgate.fake_upstream", "--host", LOOPBACK, "--port", "0"]
    server = Server(name, argv, work, env=_clean_env(), cwd=work)
    try:
        line = server.wait_for_line("fake upstream on ")
    except BaseException:
        server.kill()
        raise
    return server, line.split("fake upstream on ", 1)[1].strip()


def start_direct(work: Path) -> Running:
    """(a) The fake upstream, loaded directly."""
    fake, base = start_fake(work, "direct-fake")
    url = base.removesuffix("/v1") + CHAT_PATH
    running = Running("direct", url, "Bearer sk-direct", None, fake, base)
    running.servers = [fake]
    return running


def start_spendgate(work: Path) -> Running:
    """(c) `spendgate serve` (SQLite ledger in `work`, in-process limits) before a fake."""
    return _start_spendgate(work, "spendgate", limited=False)


def start_spendgate_limited(work: Path) -> Running:
    """(c') as (c), with every limit, both budgets, credits and an allow-list on the key."""
    return _start_spendgate(work, "sg-limits", limited=True)


def _start_spendgate(work: Path, name: str, *, limited: bool) -> Running:
    home = work / name
    home.mkdir()  # the cwd: no stray .env is read
    database_url = f"sqlite:///{home / 'ledger.db'}"
    key = asyncio.run(_make_key(database_url, limited=limited))
    fake, base = start_fake(work, f"{name}-fake")
    port = free_port()
    env = _clean_env() | {
        "SPENDGATE_DATABASE_URL": database_url,
        "SPENDGATE_UPSTREAM_BASE": base,
        "SPENDGATE_UPSTREAM_API_KEY": "sk-bench-upstream",
        "SPENDGATE_ADMIN_TOKEN": secrets.token_hex(16),
    }
    argv = [sys.executable, "-m", "spendgate", "serve", "--host", LOOPBACK, "--port", str(port)]
    gateway = Server(name, argv, work, env=env, cwd=home)
    running = Running(name, f"http://{LOOPBACK}:{port}{CHAT_PATH}", f"Bearer {key}",
                      gateway, fake, base, finisher=_ledger_check(database_url))  # fmt: skip
    running.servers = [fake, gateway]
    try:
        gateway.wait_for_line("listening")
    except BaseException:
        running.kill()
        raise
    return running


# Later targets — (b) pass-through proxy, (d) spendgate + PostgreSQL + Redis, (e) LiteLLM — go here.
TARGETS: list[TargetDef] = [
    TargetDef("direct", "(a) the fake upstream, direct", start_direct),
    TargetDef(
        "spendgate", "(c) spendgate serve, SQLite ledger, in-process limits", start_spendgate
    ),
    TargetDef(
        "sg-limits",
        "(c') as (c) with 12 rate limits (user and key), two budgets, credits and an allow-list "
        "on the key, none of them reached",
        start_spendgate_limited,
    ),
]


def _clean_env() -> dict[str, str]:
    """This environment minus every variable spendgate's settings would read."""
    names = {"SPENDGATE_CONFIG"}
    for info in Settings.model_fields.values():
        names.update(c for c in getattr(info.validation_alias, "choices", ()) if isinstance(c, str))
    upper = {name.upper() for name in names}
    return {k: v for k, v in os.environ.items() if k.upper() not in upper}


async def _make_key(database_url: str, *, limited: bool) -> str:
    engine = create_engine(normalize_database_url(database_url))
    try:
        await upgrade(engine)
        key = new_key()
        store = Store(engine)
        if not limited:
            await store.create_key("bench", hash_key(key), display_key(key), note="bench")
            return key
        # Limits and money out of reach: every request is admitted, and checked.
        limits = dict.fromkeys(LIMIT_WINDOWS, 10**11)
        money = Decimal(1_000_000)
        await store.create_user("bench", budget_usd=money, limits=limits)
        await store.add_credit("bench", money, note="bench", actor="bench")
        await store.create_key(
            "bench", hash_key(key), display_key(key), note="bench", budget_usd=money,
            budget_period="daily", limits=limits, models=["gpt-4o*"],
        )  # fmt: skip
        return key
    finally:
        await engine.dispose()


async def _ledger_requests(database_url: str) -> int:
    engine = create_engine(normalize_database_url(database_url))
    try:
        end = datetime.now(UTC).date() + timedelta(days=1)
        report = await usage_report(engine, UsageFilter(start=date(2000, 1, 1), end=end), None)
        return int(report["totals"]["requests"])
    finally:
        await engine.dispose()


def _ledger_check(database_url: str) -> Callable[[Running], Check]:
    def check(running: Running) -> Check:
        assert running.gateway is not None
        code = running.gateway.stop()  # SIGTERM: in-flight streams finish, the queue drains
        if code not in (0, -15):
            raise BenchError(
                f"spendgate exited with {code} on SIGTERM:\n{running.gateway.log_tail()}"
            )
        stats = loopback_json(running.upstream_base.removesuffix("/v1") + "/__fake__/stats")
        received, ledger = int(stats["received"]), asyncio.run(_ledger_requests(database_url))
        low, high = running.completed, running.completed + running.cut_allowance
        exact, bounded = ledger == received, low <= ledger <= high
        lines = [
            f"wrk completed responses (all spendgate runs incl. warm-ups): {low}",
            f"fake upstream received (GET /__fake__/stats): {received} "
            f"(billed {stats['requests']}, unbilled {stats['unbilled']}, errors {stats['errors']})",
            f"ledger requests (usage_report after SIGTERM drain): {ledger}",
            f"ledger == upstream received: {'PASS' if exact else 'FAIL'}",
            f"wrk completed <= ledger <= wrk completed + connections per run ({high}): "
            f"{'PASS' if bounded else 'FAIL'}",
        ]
        return Check(exact and bounded, lines)

    return check
