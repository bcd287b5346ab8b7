"""LimitPolicy: allow-lists, budgets, credits and limits with an injected clock (no sleeps)."""

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal

import orjson
import pytest

from spendgate.errors import BudgetExceeded, InsufficientCredits, ModelNotAllowed, RateLimitExceeded
from spendgate.keys.principals import Principal
from spendgate.ledger.records import KeyRecord, UserRecord
from spendgate.limits.memory import MemoryBackend
from spendgate.limits.policy import LimitPolicy, model_allowed
from spendgate.metering.pricing import ModelPrice, PriceBook
from spendgate.metering.usage import Usage
from spendgate.money import pico_to_usd, usd_to_pico
from spendgate.proxy.rewrite import PreparedRequest, prepare_request

SECOND = 10**9
# 1 µ$ per input token, 2 µ$ per output token
PRICE = ModelPrice(Decimal("0.000001"), Decimal("0.000002"), Decimal("0.000001"), "test")


class Clock:
    """Epoch nanoseconds that move only when the test says so."""

    def __init__(self, at: datetime) -> None:
        self.ns = int(at.timestamp()) * SECOND

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * SECOND)

    def set(self, at: datetime) -> None:
        self.ns = int(at.timestamp()) * SECOND


def baseline_of(values: dict[tuple[str, date | None], int]) -> Callable[..., Awaitable[int]]:
    async def baseline(scope: str, since: date | None) -> int:
        return values.get((scope, since), 0)

    return baseline


def make_policy(
    clock: Clock, baselines: dict[tuple[str, date | None], int] | None = None
) -> LimitPolicy:
    backend = MemoryBackend(
        baseline_of(baselines or {}), reservation_ttl_ns=600 * SECOND, clock=clock
    )
    return LimitPolicy(backend, PriceBook({"priced": PRICE}), default_max_tokens=100, clock=clock)


def principal(
    *,
    user_budget: str | None = None,
    user_period: str | None = None,
    key_budget: str | None = None,
    key_period: str | None = None,
    credit: str | None = None,
    user_limits: dict[str, int] | None = None,
    key_limits: dict[str, int] | None = None,
    models: list[str] | None = None,
) -> Principal:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    user = UserRecord(
        id=1, name="ann", email=None,
        budget_usd=Decimal(user_budget) if user_budget else None, budget_period=user_period,
        limits=user_limits or {}, disabled=False, created_at=created,
        credit_usd=Decimal(credit) if credit else None,
    )  # fmt: skip
    key = KeyRecord(
        id=7, user_id=1, user="ann", key_hash="h", display="sg-abcd…wxyz", note=None,
        created_at=created, revoked_at=None, expires_at=None, models=models,
        budget_usd=Decimal(key_budget) if key_budget else None, budget_period=key_period,
        limits=key_limits or {}, last_used_at=None,
    )  # fmt: skip
    return Principal(key=key, user=user)


def chat(max_tokens: int | None = 10, model: str = "priced") -> PreparedRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return prepare_request(
        "chat/completions", "POST", b"application/json", orjson.dumps(body),
        default_model=None, end_user_header=None,
    )  # fmt: skip


def usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion)  # fmt: skip


async def spend(policy: LimitPolicy, who: Principal, cost: str) -> None:
    admitted = await policy.admit(who, chat())
    await policy.settle(who, admitted, usage(1, 1), Decimal(cost))


# allow-lists


@pytest.mark.parametrize(
    ("model", "globs", "allowed"),
    [
        ("gpt-4o", ["gpt-4o"], True),
        ("gpt-4o-mini", ["gpt-4o"], False),
        ("gpt-4o-mini", ["gpt-*"], True),
        ("o1-preview", ["gpt-*", "o*"], True),
        ("GPT-4o", ["gpt-*"], False),
        ("openai/gpt-4o", ["*/*"], True),
        ("anything", [], False),
    ],
)
def test_model_globs(model: str, globs: list[str], allowed: bool) -> None:
    assert model_allowed(model, globs) is allowed


async def test_a_model_outside_the_allow_list_is_refused_with_403() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    who = principal(models=["gpt-*"])
    with pytest.raises(ModelNotAllowed) as caught:
        await policy.admit(who, chat(model="claude-3"))
    assert caught.value.status == 403
    assert "claude-3" in caught.value.message
    await policy.admit(who, chat(model="gpt-4o"))  # allowed


# budgets and periods


async def test_daily_budget_rolls_over_at_utc_midnight() -> None:
    clock = Clock(datetime(2026, 3, 10, 23, 59, 0, tzinfo=UTC))
    policy = make_policy(clock)
    who = principal(user_budget="0.0001", user_period="daily")
    await spend(policy, who, "0.0001")
    with pytest.raises(BudgetExceeded) as caught:
        await policy.admit(who, chat())
    assert caught.value.status == 402
    assert "daily budget of user 'ann'" in caught.value.message
    clock.advance(59)  # 23:59:59: still the same day
    with pytest.raises(BudgetExceeded):
        await policy.admit(who, chat())
    clock.advance(1)  # 00:00:00 the next day: a fresh budget
    await policy.admit(who, chat())


async def test_weekly_budget_resets_on_monday_and_monthly_on_the_first() -> None:
    clock = Clock(datetime(2026, 3, 15, 12, tzinfo=UTC))  # a Sunday
    policy = make_policy(clock)
    weekly = principal(user_budget="0.0001", user_period="weekly")
    await spend(policy, weekly, "0.0001")
    with pytest.raises(BudgetExceeded):
        await policy.admit(weekly, chat())
    clock.set(datetime(2026, 3, 16, tzinfo=UTC))  # Monday
    await policy.admit(weekly, chat())

    clock = Clock(datetime(2026, 3, 31, 23, tzinfo=UTC))
    policy = make_policy(clock)
    monthly = principal(user_budget="0.0001", user_period="monthly")
    await spend(policy, monthly, "0.0001")
    clock.set(datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC))
    with pytest.raises(BudgetExceeded):
        await policy.admit(monthly, chat())
    clock.set(datetime(2026, 4, 1, tzinfo=UTC))
    await policy.admit(monthly, chat())


async def test_total_budget_never_resets() -> None:
    clock = Clock(datetime(2026, 3, 10, tzinfo=UTC))
    policy = make_policy(clock)
    who = principal(key_budget="0.0001", key_period="total")
    await spend(policy, who, "0.0001")
    clock.set(datetime(2027, 3, 10, tzinfo=UTC))
    with pytest.raises(BudgetExceeded) as caught:
        await policy.admit(who, chat())
    assert "total budget of this key" in caught.value.message


async def test_budget_counts_the_ledger_baseline_of_the_period() -> None:
    clock = Clock(datetime(2026, 3, 10, tzinfo=UTC))
    # 0.0009 $ spent this month before the process started
    policy = make_policy(clock, {("user:ann", date(2026, 3, 1)): usd_to_pico(Decimal("0.0009"))})
    who = principal(user_budget="0.001")
    await spend(policy, who, "0.0001")  # 0.0009 + 0.0001 = the budget
    with pytest.raises(BudgetExceeded):
        await policy.admit(who, chat())
    view = await policy.budget_view("user:ann", Decimal("0.001"), None)
    assert view is not None
    assert view.spent_usd == Decimal("0.001")
    assert view.remaining_usd == 0
    assert view.resets_at == datetime(2026, 4, 1, tzinfo=UTC)


async def test_user_and_key_budgets_both_apply() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    who = principal(user_budget="1", key_budget="0.0001")
    await spend(policy, who, "0.0001")
    with pytest.raises(BudgetExceeded) as caught:
        await policy.admit(who, chat())
    assert "this key" in caught.value.message


async def test_the_reservation_is_the_worst_case_and_blocks_concurrent_requests() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    who = principal(user_budget="0.001")
    request = chat(max_tokens=200)
    first = await policy.admit(who, request)
    # prompt: one token per body byte at 1 µ$; output: 200 tokens at 2 µ$
    expected = Decimal(len(request.body)) * Decimal("0.000001") + 200 * Decimal("0.000002")
    assert pico_to_usd(first.reserved_pico) == expected
    admitted = [first]
    while True:
        try:
            admitted.append(await policy.admit(who, request))
        except BudgetExceeded:
            break
    assert len(admitted) == math.ceil(Decimal("0.001") / expected)  # until reservations cover it
    for each in admitted:
        await policy.release(who, each)
    await policy.admit(who, request)  # released: room again


async def test_a_request_without_max_tokens_reserves_the_default_cap() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    request = chat(max_tokens=None)
    admitted = await policy.admit(principal(user_budget="1"), request)
    assert pico_to_usd(admitted.reserved_pico) == (
        Decimal(len(request.body)) * Decimal("0.000001") + 100 * Decimal("0.000002")
    )


async def test_unpriced_models_reserve_nothing() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    admitted = await policy.admit(principal(user_budget="1"), chat(model="mystery"))
    assert pico_to_usd(admitted.reserved_pico) == 0


# credits


async def test_credits_refuse_with_402_once_the_balance_is_spent() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    who = principal(credit="0.0002")
    await spend(policy, who, "0.00015")
    assert await policy.balance(who.user) == Decimal("0.00005")
    await spend(policy, who, "0.0001")  # admitted while balance > 0; may overdraw once
    assert await policy.balance(who.user) == Decimal("-0.00005")
    with pytest.raises(InsufficientCredits) as caught:
        await policy.admit(who, chat())
    assert caught.value.status == 402
    assert caught.value.code == "insufficient_credits"


async def test_a_user_without_a_credit_account_has_no_balance() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    who = principal()
    await spend(policy, who, "5")
    assert await policy.balance(who.user) is None


# rate limits


async def test_request_limit_refuses_with_headers_and_exact_retry_after() -> None:
    clock = Clock(datetime(2026, 3, 10, tzinfo=UTC))
    policy = make_policy(clock)
    who = principal(key_limits={"requests_per_minute": 3})
    first = await policy.admit(who, chat())
    assert dict(first.headers) == {
        b"x-ratelimit-limit-requests": b"3",
        b"x-ratelimit-remaining-requests": b"2",
        b"x-ratelimit-reset-requests": b"20s",
    }
    await policy.admit(who, chat())
    await policy.admit(who, chat())
    with pytest.raises(RateLimitExceeded) as caught:
        await policy.admit(who, chat())
    headers = dict(caught.value.headers)
    assert caught.value.status == 429
    assert headers[b"retry-after"] == b"20"
    assert headers[b"retry-after-ms"] == b"20000"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert headers[b"x-ratelimit-reset-requests"] == b"1m0s"
    clock.advance(19.999)
    with pytest.raises(RateLimitExceeded):
        await policy.admit(who, chat())
    clock.advance(0.001)
    await policy.admit(who, chat())


async def test_token_limits_charge_the_real_count_at_settlement() -> None:
    clock = Clock(datetime(2026, 3, 10, tzinfo=UTC))
    policy = make_policy(clock)
    who = principal(user_limits={"tokens_per_minute": 60, "requests_per_minute": 100})
    first = await policy.admit(who, chat())
    assert dict(first.headers)[b"x-ratelimit-remaining-tokens"] == b"60"
    await policy.settle(who, first, usage(30, 40), Decimal(0))  # 70 tokens: 10 in debt
    with pytest.raises(RateLimitExceeded) as caught:
        await policy.admit(who, chat())
    headers = dict(caught.value.headers)
    assert headers[b"x-ratelimit-limit-tokens"] == b"60"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"0"
    assert headers[b"retry-after"] == b"11"  # 11 tokens at one per second
    # the refused request took nothing from the request limit
    assert headers[b"x-ratelimit-remaining-requests"] == b"99"
    clock.advance(11)
    await policy.admit(who, chat())


async def test_one_refusal_consumes_none_of_the_other_limits() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    who = principal(
        user_limits={"requests_per_minute": 10}, key_limits={"requests_per_day": 1},
    )  # fmt: skip
    await policy.admit(who, chat())
    for _ in range(5):
        with pytest.raises(RateLimitExceeded):
            await policy.admit(who, chat())
    states = {state.rule.key: state.remaining for state in await policy.limit_states(who)}
    assert states == {"user:ann:requests_per_minute": 9, "key:7@ann:requests_per_day": 0}


async def test_a_budget_refusal_consumes_no_request_limit() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    who = principal(user_budget="0", user_limits={"requests_per_minute": 10})
    with pytest.raises(BudgetExceeded):
        await policy.admit(who, chat())
    [state] = await policy.limit_states(who)
    assert state.remaining == 10


async def test_successful_responses_carry_the_tightest_limit() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    who = principal(
        user_limits={"requests_per_minute": 5, "requests_per_day": 1000},
        key_limits={"requests_per_hour": 3},
    )  # fmt: skip
    admitted = await policy.admit(who, chat())
    assert dict(admitted.headers)[b"x-ratelimit-limit-requests"] == b"3"
    assert dict(admitted.headers)[b"x-ratelimit-remaining-requests"] == b"2"
    assert b"x-ratelimit-limit-tokens" not in dict(admitted.headers)  # no token limit set


async def test_budgets_apply_to_metered_endpoints_only() -> None:
    policy = make_policy(Clock(datetime(2026, 3, 10, tzinfo=UTC)))
    who = principal(user_budget="0")
    models = prepare_request("models", "GET", None, b"", default_model=None, end_user_header=None)
    await policy.admit(who, models)  # listing models costs nothing
