"""The contract every `LimitBackend` keeps, run against each backend.

Time is a fake clock advanced by hand and baselines come from a dict, so every number is
exact and nothing sleeps. A backend joins the suite by adding one factory to `FACTORIES`
(a server-backed one as `pytest.param(factory, id="redis", marks=pytest.mark.services)`).
"""

import asyncio
import os
import random
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Protocol

import pytest
from redis.asyncio import Redis

from spendgate.limits.backend import (
    Baseline,
    Grant,
    LimitBackend,
    RateRule,
    RateState,
    Refusal,
    SpendKind,
    SpendRule,
    Unit,
)
from spendgate.limits.gcra import Rate
from spendgate.limits.memory import MemoryBackend
from spendgate.limits.redis import RedisBackend

SECOND = 10**9
MINUTE = 60 * SECOND
DAY_NS = 86_400 * SECOND
EPOCH = date(1970, 1, 1)
TODAY = date(2025, 3, 14)
TTL_NS = 30 * SECOND
USER = "user:alice"
KEY = "key:1@alice"  # a key scope names its user (the Redis hash tag)


def start_of(day: date) -> int:
    """The first nanosecond of a UTC day, in epoch nanoseconds."""
    return (day - EPOCH).days * DAY_NS


def utc_day(now_ns: int) -> date:
    """The UTC day of an instant (day number = now_ns // DAY_NS since 1970-01-01)."""
    return EPOCH + timedelta(days=now_ns // DAY_NS)


class FakeClock:
    """Epoch nanoseconds that move only when a test moves them."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        self.now_ns += ns


class LedgerDown(Exception):
    """What the fake baseline raises when told to fail."""


class FakeBaseline:
    """Spend before counting began, from a dict; records calls, can wait or fail."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, date | None], int] = {}
        self.calls: list[tuple[str, date | None]] = []
        self.gate: asyncio.Event | None = None  # when given, every call waits for it
        self.failures = 0  # the next this many calls raise LedgerDown

    async def __call__(self, scope: str, since: date | None) -> int:
        self.calls.append((scope, since))
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise LedgerDown(scope)
        return self.values.get((scope, since), 0)


REDIS_URL = "redis://127.0.0.1:6379/0"


async def require_redis() -> None:
    """Skip (fail under CI=true) when the test Redis does not answer."""
    url = os.environ.get("SPENDGATE_TEST_REDIS_URL", REDIS_URL)
    client = Redis.from_url(url)
    try:
        await client.ping()
    except Exception as error:
        reason = f"redis server not usable at {url}: {type(error).__name__}: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        await client.aclose()


class Servers:
    """Server connections a test opened; closed (and their keys deleted) after it."""

    def __init__(self) -> None:
        self.redis: list[tuple[Redis, str]] = []

    def redis_client(self) -> tuple[Redis, str]:
        """A client and a key prefix of this test's own."""
        client = Redis.from_url(os.environ.get("SPENDGATE_TEST_REDIS_URL", REDIS_URL))
        prefix = f"sgtest-{secrets.token_hex(4)}"
        self.redis.append((client, prefix))
        return client, prefix


BackendFactory = Callable[[Baseline, int, Callable[[], int], Servers], LimitBackend]


def memory_backend(
    baseline: Baseline, ttl_ns: int, clock: Callable[[], int], _servers: Servers
) -> LimitBackend:
    return MemoryBackend(baseline, reservation_ttl_ns=ttl_ns, clock=clock)


def redis_backend(
    baseline: Baseline, ttl_ns: int, clock: Callable[[], int], servers: Servers
) -> LimitBackend:
    client, prefix = servers.redis_client()

    async def history(scope: str, since: date | None, _before: datetime) -> int:
        return await baseline(scope, since)  # the fake ledger: all of it is "before"

    return RedisBackend(
        client, history, prefix=prefix, reservation_ttl_ns=ttl_ns, settle_ns=0, clock=clock
    )


FACTORIES = [
    pytest.param(memory_backend, id="memory"),
    pytest.param(redis_backend, id="redis", marks=pytest.mark.services),
]


class MakeBackend(Protocol):
    def __call__(self, ttl_ns: int = TTL_NS) -> LimitBackend: ...


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_of(TODAY) + 12 * 3_600 * SECOND)


@pytest.fixture
def baseline() -> FakeBaseline:
    return FakeBaseline()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    opened = Servers()
    yield opened
    for client, prefix in opened.redis:
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()


@pytest.fixture(params=FACTORIES)
async def make_backend(
    request: pytest.FixtureRequest, clock: FakeClock, baseline: FakeBaseline, servers: Servers
) -> MakeBackend:
    """Builds a backend of the parametrised kind on the test's clock and baseline."""
    factory: BackendFactory = request.param
    if factory is redis_backend:
        await require_redis()

    def make(ttl_ns: int = TTL_NS) -> LimitBackend:
        return factory(baseline, ttl_ns, clock, servers)

    return make


@pytest.fixture
def backend(make_backend: MakeBackend) -> LimitBackend:
    return make_backend()


def per_minute(scope: str, limit: int, unit: Unit = "requests") -> RateRule:
    name = f"{unit}_per_minute"
    return RateRule(f"{scope}:{name}", name, scope, unit, Rate(limit, MINUTE))


def every(scope: str, name: str, period_ns: int) -> RateRule:
    """One request per `period_ns`."""
    return RateRule(f"{scope}:{name}", name, scope, "requests", Rate(1, period_ns))


def budget(
    scope: str, cap: int, since: date | None = TODAY, kind: SpendKind = "budget"
) -> SpendRule:
    return SpendRule(scope, kind, cap, since)


def granted(result: Grant | Refusal) -> Grant:
    assert isinstance(result, Grant), result
    return result


def refused(result: Grant | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


async def remaining(backend: LimitBackend, rule: RateRule) -> int:
    [state] = await backend.peek([rule])
    assert state.rule == rule
    return state.remaining


async def acquire_n(
    backend: LimitBackend, n: int, rates: Sequence[RateRule], spends: Sequence[SpendRule] = ()
) -> list[Grant]:
    return [granted(await backend.acquire(rates, spends, 0)) for _ in range(n)]


# rate rules


def by_unit(states: Sequence[RateState]) -> dict[str, tuple[RateRule, int, int]]:
    """A grant's states keyed by unit, as (rule, remaining, reset_after_ns)."""
    assert len({state.rule.unit for state in states}) == len(states), "one state per unit"
    return {
        state.rule.unit: (state.rule, state.remaining, state.reset_after_ns) for state in states
    }


async def test_fresh_rules_are_full_buckets(backend: LimitBackend) -> None:
    user, key = per_minute(USER, 5), per_minute(KEY, 2)
    states = await backend.peek([user, key])
    assert [(s.rule, s.remaining, s.reset_after_ns) for s in states] == [
        (user, 5, 0),
        (key, 2, 0),
    ]


async def test_grant_reports_the_tightest_rule_of_each_unit(backend: LimitBackend) -> None:
    user_rpm, key_rpm = per_minute(USER, 5), per_minute(KEY, 2)
    user_tpm, key_tpm = per_minute(USER, 500, "tokens"), per_minute(KEY, 1_000, "tokens")
    grant = granted(await backend.acquire([user_rpm, key_tpm, key_rpm, user_tpm], [], 0))
    assert by_unit(grant.states) == {
        "requests": (key_rpm, 1, 30 * SECOND),  # 1 of 2 left; the used one is back in 30 s
        "tokens": (user_tpm, 500, 0),  # token rules are not charged by acquire
    }
    assert grant.reservation is None


@pytest.mark.parametrize("hourly_first", [True, False])
async def test_grant_reports_the_later_reset_when_remaining_ties(
    backend: LimitBackend, hourly_first: bool
) -> None:
    hourly = RateRule(f"{USER}:rph", "requests_per_hour", USER, "requests", Rate(2, 3_600 * SECOND))
    minutely = per_minute(KEY, 3)
    granted(await backend.acquire([minutely], [], 0))
    rates = [hourly, minutely] if hourly_first else [minutely, hourly]
    grant = granted(await backend.acquire(rates, [], 0))
    # Both have one request left: the hourly rule's comes back in 30 minutes, the other's
    # in 40 seconds. The headers must tell the later one.
    assert {s.rule: (s.remaining, s.reset_after_ns) for s in await backend.peek(rates)} == {
        hourly: (1, 1_800 * SECOND),
        minutely: (1, 40 * SECOND),
    }
    assert by_unit(grant.states) == {"requests": (hourly, 1, 1_800 * SECOND)}


async def test_request_refused_by_one_rule_charges_no_other_rule(backend: LimitBackend) -> None:
    user, key = per_minute(USER, 5), per_minute(KEY, 2)
    await acquire_n(backend, 2, [user, key])
    for _ in range(3):
        refusal = refused(await backend.acquire([user, key], [], 0))
        assert refusal.kind == "rate"
        assert refusal.rule == key
        assert [(s.rule, s.remaining) for s in refusal.states] == [(user, 3), (key, 0)]
    assert await remaining(backend, user) == 3
    await acquire_n(backend, 3, [user])
    assert refused(await backend.acquire([user], [], 0)).rule == user


async def test_request_refused_by_a_budget_charges_no_request_limit(
    backend: LimitBackend, baseline: FakeBaseline
) -> None:
    rpm = per_minute(USER, 5)
    baseline.values[(USER, TODAY)] = 100
    rule = budget(USER, 100)
    for _ in range(7):
        refusal = refused(await backend.acquire([rpm], [rule], 40))
        assert (refusal.kind, refusal.rule) == ("budget", rule)
    assert await remaining(backend, rpm) == 5
    assert await backend.reserved(USER) == 0


async def test_refused_request_passes_exactly_after_retry_after(
    backend: LimitBackend, clock: FakeClock
) -> None:
    rpm = per_minute(KEY, 2)  # one request back every 30 s
    await acquire_n(backend, 2, [rpm])
    refusal = refused(await backend.acquire([rpm], [], 0))
    assert refusal.retry_after_ns == 30 * SECOND
    clock.advance(refusal.retry_after_ns - 1)
    assert refused(await backend.acquire([rpm], [], 0)).retry_after_ns == 1
    clock.advance(1)
    granted(await backend.acquire([rpm], [], 0))
    refused(await backend.acquire([rpm], [], 0))


@pytest.mark.parametrize("reverse", [False, True], ids=["slow-last", "slow-first"])
async def test_refusal_names_the_rule_with_the_longest_wait(
    backend: LimitBackend, reverse: bool
) -> None:
    fast = every(KEY, "fast", 10 * SECOND)
    slow = every(USER, "slow", MINUTE)
    roomy = per_minute(USER, 50)
    rates = [roomy, fast, slow]
    if reverse:
        rates.reverse()
    granted(await backend.acquire(rates, [], 0))
    refusal = refused(await backend.acquire(rates, [], 0))
    assert refusal.kind == "rate"
    assert refusal.rule == slow
    assert refusal.retry_after_ns == MINUTE
    assert {s.rule.key: s.remaining for s in refusal.states} == {
        roomy.key: 49,
        fast.key: 0,
        slow.key: 0,
    }


@pytest.mark.parametrize(("old_limit", "new_limit"), [(3, 2), (2, 3)])
async def test_rule_with_a_new_limit_starts_from_a_full_bucket(
    backend: LimitBackend, old_limit: int, new_limit: int
) -> None:
    old = per_minute(KEY, old_limit)
    await acquire_n(backend, old_limit, [old])
    refused(await backend.acquire([old], [], 0))
    new = RateRule(old.key, old.name, old.scope, old.unit, Rate(new_limit, MINUTE))
    [state] = await backend.peek([new])
    assert (state.remaining, state.reset_after_ns) == (new_limit, 0)
    await acquire_n(backend, new_limit, [new])
    assert refused(await backend.acquire([new], [], 0)).rule == new


# token rules


async def test_token_rule_needs_room_for_one_token_and_is_charged_on_commit(
    backend: LimitBackend,
) -> None:
    tpm = per_minute(KEY, 1_000, "tokens")
    grant = granted(await backend.acquire([tpm], [], 0))
    assert await remaining(backend, tpm) == 1_000  # acquire took no tokens
    await backend.commit(grant, [tpm], [], 999, 0)
    assert await remaining(backend, tpm) == 1
    grant = granted(await backend.acquire([tpm], [], 0))  # one token of room is enough
    assert await remaining(backend, tpm) == 1
    await backend.commit(grant, [tpm], [], 1, 0)
    refusal = refused(await backend.acquire([tpm], [], 0))
    assert (refusal.kind, refusal.rule) == ("rate", tpm)


async def test_token_debt_refuses_until_repaid_with_exact_retry(
    backend: LimitBackend, clock: FakeClock
) -> None:
    tpm = per_minute(KEY, 1_000, "tokens")
    rpm = per_minute(KEY, 100)
    grant = granted(await backend.acquire([rpm, tpm], [], 0))
    await backend.commit(grant, [tpm], [], 5_000, 0)  # 4,000 tokens beyond the bucket
    refusal = refused(await backend.acquire([rpm, tpm], [], 0))
    assert (refusal.kind, refusal.rule) == ("rate", tpm)
    assert await remaining(backend, rpm) == 99  # the refused request took no request
    # The debt plus the one token a request needs, at 1,000 tokens a minute: 240.06 s.
    assert refusal.retry_after_ns == 4_001 * MINUTE // 1_000
    clock.advance(refusal.retry_after_ns - 1)
    assert refused(await backend.acquire([rpm, tpm], [], 0)).rule == tpm
    clock.advance(1)
    granted(await backend.acquire([rpm, tpm], [], 0))


# spend rules and reservations


@pytest.mark.parametrize(("kind", "since"), [("budget", TODAY), ("credits", None)])
async def test_spend_below_cap_passes_and_at_cap_refuses(
    backend: LimitBackend, baseline: FakeBaseline, kind: SpendKind, since: date | None
) -> None:
    baseline.values[(USER, since)] = 900
    rule = budget(USER, 1_000, since, kind)
    granted(await backend.acquire([], [rule], 50))  # 900 < 1000
    assert await backend.reserved(USER) == 50
    granted(await backend.acquire([], [rule], 50))  # 900 + 50 < 1000
    assert await backend.reserved(USER) == 100
    refusal = refused(await backend.acquire([], [rule], 1))  # 900 + 100 reaches the cap
    assert (refusal.kind, refusal.rule) == (kind, rule)
    assert await backend.reserved(USER) == 100


async def test_settled_spend_alone_can_reach_the_cap(
    backend: LimitBackend, baseline: FakeBaseline
) -> None:
    baseline.values[(USER, TODAY)] = 600
    rule = budget(USER, 1_000)
    assert await backend.spent(USER, TODAY) == 600  # counting starts (see the protocol)
    await backend.commit(Grant(), [], [USER], 0, 399)
    granted(await backend.acquire([], [rule], 0))
    await backend.commit(Grant(), [], [USER], 0, 1)
    assert refused(await backend.acquire([], [rule], 0)).kind == "budget"


async def test_zero_cap_refuses_the_first_request(backend: LimitBackend) -> None:
    rule = budget(KEY, 0, None, "credits")
    refusal = refused(await backend.acquire([], [rule], 10))
    assert (refusal.kind, refusal.rule) == ("credits", rule)
    assert await backend.reserved(KEY) == 0


async def test_reservation_is_taken_once_on_every_scope_a_spend_rule_names(
    backend: LimitBackend,
) -> None:
    rules = [
        budget(USER, 10_000),
        budget(USER, 10_000, None, "credits"),
        budget(KEY, 10_000, None, "credits"),
    ]
    grant = granted(await backend.acquire([], rules, 70))
    assert grant.reservation is not None
    assert grant.reserved_pico == 70
    assert await backend.reserved(USER) == 70
    assert await backend.reserved(KEY) == 70
    assert await backend.reserved("user:bob") == 0


async def test_commit_replaces_the_reservation_with_the_real_cost(
    backend: LimitBackend, baseline: FakeBaseline
) -> None:
    baseline.values[(USER, TODAY)] = 1_000
    baseline.values[(KEY, None)] = 5
    grant = granted(
        await backend.acquire([], [budget(USER, 10_000), budget(KEY, 10_000, None)], 70)
    )
    await backend.commit(grant, [], [USER, KEY], 0, 40)
    assert await backend.reserved(USER) == 0
    assert await backend.reserved(KEY) == 0
    assert await backend.spent(USER, TODAY) == 1_040
    assert await backend.spent(KEY, None) == 45


async def test_commit_records_the_cost_only_on_the_scopes_given(backend: LimitBackend) -> None:
    grant = granted(await backend.acquire([], [budget(USER, 10_000), budget(KEY, 10_000)], 70))
    await backend.commit(grant, [], [USER], 0, 40)
    assert await backend.spent(USER, TODAY) == 40
    assert await backend.spent(KEY, TODAY) == 0
    assert await backend.reserved(KEY) == 0


async def test_release_drops_the_reservation_and_charges_nothing(
    backend: LimitBackend, baseline: FakeBaseline
) -> None:
    baseline.values[(USER, TODAY)] = 250
    tpm = per_minute(USER, 1_000, "tokens")
    grant = granted(await backend.acquire([tpm], [budget(USER, 10_000)], 100))
    assert await backend.reserved(USER) == 100
    await backend.commit(grant, [tpm], [USER], 0, 0)
    assert await backend.reserved(USER) == 0
    assert await backend.spent(USER, TODAY) == 250
    assert await remaining(backend, tpm) == 1_000


async def test_without_spend_rules_nothing_is_reserved(backend: LimitBackend) -> None:
    grant = granted(await backend.acquire([per_minute(USER, 5)], [], 100))
    assert grant.reservation is None
    assert grant.reserved_pico == 0
    assert await backend.reserved(USER) == 0


async def test_concurrent_acquires_reserve_no_more_than_the_cap(
    backend: LimitBackend,
) -> None:
    cap, reserve = 1_000, 100
    rule = budget(USER, cap)
    results = await asyncio.gather(*(backend.acquire([], [rule], reserve) for _ in range(30)))
    grants = [result for result in results if isinstance(result, Grant)]
    assert len(grants) == -(-cap // reserve)  # admitted while reservations stay below the cap
    assert await backend.reserved(USER) == len(grants) * reserve
    for grant in grants:
        await backend.commit(grant, [], [USER], 0, reserve)
    assert await backend.spent(USER, TODAY) <= cap + reserve
    assert await backend.reserved(USER) == 0
    refused(await backend.acquire([], [rule], reserve))


@pytest.mark.parametrize("seed", range(6))
async def test_interleaved_requests_overspend_by_less_than_one_reservation(
    backend: LimitBackend, seed: int
) -> None:
    rng = random.Random(seed)
    cap, reserve = 1_000, 100
    rule = budget(USER, cap)
    open_grants: list[Grant] = []
    refusals = 0
    for _ in range(300):
        if open_grants and rng.random() < 0.45:
            grant = open_grants.pop(rng.randrange(len(open_grants)))
            await backend.commit(grant, [], [USER], 0, rng.randint(reserve // 2, reserve))
        elif isinstance(result := await backend.acquire([], [rule], reserve), Grant):
            open_grants.append(result)
        else:
            refusals += 1
        committed = await backend.spent(USER, TODAY)
        assert committed + await backend.reserved(USER) < cap + reserve
    for grant in open_grants:
        await backend.commit(grant, [], [USER], 0, reserve)
    assert refusals > 0  # the cap was really reached
    assert await backend.spent(USER, TODAY) < cap + reserve


async def test_uncommitted_reservation_expires_after_the_ttl(
    make_backend: MakeBackend, clock: FakeClock
) -> None:
    backend = make_backend(ttl_ns=TTL_NS)
    rule = budget(USER, 100)
    granted(await backend.acquire([], [rule], 100))
    refused(await backend.acquire([], [rule], 100))
    clock.advance(TTL_NS - 1)
    assert await backend.reserved(USER) == 100
    refused(await backend.acquire([], [rule], 100))
    clock.advance(1)
    assert await backend.reserved(USER) == 0
    granted(await backend.acquire([], [rule], 100))


async def test_committing_an_expired_reservation_is_harmless(
    make_backend: MakeBackend, clock: FakeClock
) -> None:
    backend = make_backend(ttl_ns=TTL_NS)
    rule = budget(USER, 10_000)
    stale = granted(await backend.acquire([], [rule], 100))
    clock.advance(TTL_NS // 2)
    fresh = granted(await backend.acquire([], [rule], 100))
    clock.advance(TTL_NS - TTL_NS // 2)
    assert await backend.reserved(USER) == 100  # the stale one is gone, the fresh one held
    await backend.commit(stale, [], [USER], 0, 60)
    assert await backend.reserved(USER) == 100  # the fresh reservation is untouched
    assert await backend.spent(USER, TODAY) == 60
    await backend.commit(fresh, [], [USER], 0, 70)
    assert await backend.reserved(USER) == 0
    assert await backend.spent(USER, TODAY) == 130
    await backend.commit(stale, [], [USER], 0, 0)  # released again: still nothing negative
    assert await backend.reserved(USER) == 0


# baselines and periods


async def test_spent_is_the_baseline_plus_what_was_committed_since(
    backend: LimitBackend, baseline: FakeBaseline
) -> None:
    baseline.values[(USER, TODAY)] = 7_000
    baseline.values[(USER, None)] = 9_000
    assert await backend.spent(USER, TODAY) == 7_000
    await backend.commit(Grant(), [], [USER], 0, 300)
    await backend.commit(Grant(), [], [USER], 0, 20)
    assert await backend.spent(USER, TODAY) == 7_320
    assert await backend.spent(USER, None) == 9_320
    assert await backend.spent(KEY, None) == 0


async def test_baseline_is_read_once_per_scope_and_period_under_concurrent_first_acquires(
    backend: LimitBackend, baseline: FakeBaseline
) -> None:
    baseline.values[(USER, TODAY)] = 10
    baseline.gate = asyncio.Event()
    rules = [budget(USER, 10_000), budget(USER, 10_000, None, "credits")]
    waiting = 0
    all_waiting = asyncio.Event()

    async def request() -> Grant | Refusal:
        nonlocal waiting
        waiting += 1
        if waiting == 5:
            all_waiting.set()
        return await backend.acquire([], rules, 10)

    tasks = [asyncio.create_task(request()) for _ in range(5)]
    await all_waiting.wait()  # every request is inside acquire, the first read not done
    assert not any(task.done() for task in tasks)
    baseline.gate.set()
    for result in await asyncio.gather(*tasks):
        granted(result)
    assert len(baseline.calls) == 2
    assert set(baseline.calls) == {(USER, TODAY), (USER, None)}
    assert await backend.reserved(USER) == 50
    assert await backend.spent(USER, TODAY) == 10
    granted(await backend.acquire([], rules, 10))
    assert len(baseline.calls) == 2


async def test_failed_baseline_fails_the_acquire_takes_nothing_and_is_retried(
    backend: LimitBackend, baseline: FakeBaseline
) -> None:
    baseline.failures = 1
    rpm = per_minute(USER, 5)
    rule = budget(USER, 10_000)
    with pytest.raises(LedgerDown):
        await backend.acquire([rpm], [rule], 10)
    assert await remaining(backend, rpm) == 5
    assert await backend.reserved(USER) == 0
    granted(await backend.acquire([rpm], [rule], 10))
    assert baseline.calls == [(USER, TODAY), (USER, TODAY)]


async def test_cancelled_acquire_does_not_cancel_others_waiting_for_the_same_baseline(
    backend: LimitBackend, baseline: FakeBaseline
) -> None:
    # A client that disconnects while its request reads the baseline must not take down
    # the other requests that happened to wait for the same read.
    baseline.gate = asyncio.Event()
    rule = budget(USER, 10_000)
    inside = asyncio.Event()

    async def request() -> Grant | Refusal:
        inside.set()
        return await backend.acquire([], [rule], 10)

    first = asyncio.create_task(request())
    await inside.wait()
    inside.clear()
    second = asyncio.create_task(request())
    await inside.wait()  # both are inside acquire, waiting for the one baseline read
    first.cancel()
    baseline.gate.set()
    await asyncio.wait([first, second])
    assert first.cancelled()
    assert not second.cancelled()
    granted(second.result())
    assert await backend.reserved(USER) == 10


async def test_spend_counts_in_the_period_of_the_day_it_was_committed(
    backend: LimitBackend, clock: FakeClock
) -> None:
    clock.now_ns = start_of(TODAY + timedelta(days=1)) - 1  # the last nanosecond of TODAY
    day = utc_day(clock())
    assert await backend.spent(USER, day) == 0  # counting starts (see the protocol)
    await backend.commit(Grant(), [], [USER], 0, 100)
    assert await backend.spent(USER, day) == 100
    clock.advance(1)  # UTC midnight
    next_day = utc_day(clock())
    assert next_day == day + timedelta(days=1)
    assert await backend.spent(USER, next_day) == 0
    await backend.commit(Grant(), [], [USER], 0, 50)
    assert await backend.spent(USER, next_day) == 50
    assert await backend.spent(USER, day) == 150
    assert await backend.spent(USER, day - timedelta(days=6)) == 150  # e.g. a weekly period
    assert await backend.spent(USER, None) == 150
    granted(await backend.acquire([], [budget(USER, 120, next_day)], 0))
    refused(await backend.acquire([], [budget(USER, 120, day)], 0))
    refused(await backend.acquire([], [budget(USER, 120, None, "credits")], 0))


async def test_new_period_adds_its_own_baseline(
    backend: LimitBackend, baseline: FakeBaseline, clock: FakeClock
) -> None:
    day = utc_day(clock())
    next_day = day + timedelta(days=1)
    baseline.values[(USER, day)] = 400
    baseline.values[(USER, next_day)] = 0
    assert await backend.spent(USER, day) == 400  # counting starts (see the protocol)
    await backend.commit(Grant(), [], [USER], 0, 100)
    assert await backend.spent(USER, day) == 500
    clock.now_ns = start_of(next_day)
    await backend.commit(Grant(), [], [USER], 0, 30)
    assert await backend.spent(USER, next_day) == 30
    assert await backend.spent(USER, day) == 530


# peek


async def test_peek_changes_nothing(
    backend: LimitBackend, baseline: FakeBaseline, clock: FakeClock
) -> None:
    baseline.values[(USER, TODAY)] = 50
    rpm = per_minute(USER, 3)
    tpm = per_minute(USER, 1_000, "tokens")
    grant = granted(await backend.acquire([rpm, tpm], [budget(USER, 10_000)], 100))
    await backend.commit(Grant(), [tpm], [USER], 400, 25)
    clock.advance(SECOND)
    before = await backend.peek([rpm, tpm])
    for _ in range(5):
        assert await backend.peek([rpm, tpm]) == before
    assert [(s.rule, s.remaining) for s in before] == [(rpm, 2), (tpm, 616)]
    assert await backend.reserved(USER) == 100
    assert await backend.spent(USER, TODAY) == 75
    after = granted(await backend.acquire([rpm, tpm], [], 0))
    assert {unit: left for unit, (_, left, _) in by_unit(after.states).items()} == {
        "requests": 1,
        "tokens": 616,
    }
    await backend.commit(grant, [tpm], [USER], 0, 0)
