"""What only the Redis backend has to get right: doubles in Lua, shared state, cluster slots,
rebuilding after a flush, and the outage settings around it. (The behaviour it shares with
the in-process backend is in test_backend_contract.py.)"""

import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta

import pytest
from redis.asyncio import Redis
from redis.cluster import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from spendgate.errors import LimitsUnavailable
from spendgate.limits.backend import Grant, LimitBackend, RateRule, Refusal, SpendRule
from spendgate.limits.gcra import Rate
from spendgate.limits.outage import OutageGuard
from spendgate.limits.redis import RedisBackend, rule_unit, scope_tag
from tests.services import REDIS_URL, unusable

pytestmark = pytest.mark.services

SECOND = 10**9
DAY = 86_400 * SECOND
NOW = datetime(2025, 3, 14, 12, tzinfo=UTC)
USER, KEY = "user:alice", "key:7@alice"


class Clock:
    def __init__(self) -> None:
        self.now_ns = int(NOW.timestamp()) * SECOND

    def __call__(self) -> int:
        return self.now_ns


class Ledger:
    """A fake ledger: settled amounts with their instants, summed like `spent_before`."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int]] = []  # scope, ns, pico

    async def history(self, scope: str, since: date | None, before: datetime) -> int:
        cut = int(before.timestamp() * 1e6) * 1000
        first = None if since is None else (since - date(1970, 1, 1)).days * DAY
        return sum(
            pico
            for where, at, pico in self.rows
            if where == scope and at < cut and (first is None or at >= first)
        )


@pytest.fixture
async def redis() -> AsyncIterator[tuple[Redis, str]]:
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as error:
        await client.aclose()
        unusable(f"redis server not usable at {REDIS_URL}: {type(error).__name__}: {error}")
    prefix = f"sgtest-{secrets.token_hex(4)}"
    yield client, prefix
    await flush(client, prefix)
    await client.aclose()


async def flush(client: Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)


def backend_on(
    redis: tuple[Redis, str], ledger: Ledger | None = None, clock: Clock | None = None
) -> RedisBackend:
    client, prefix = redis
    history = (ledger or Ledger()).history
    return RedisBackend(
        client, history, prefix=prefix, reservation_ttl_ns=60 * SECOND, settle_ns=0, clock=clock
    )


def per(scope: str, name: str, limit: int, period_ns: int, unit: str = "requests") -> RateRule:
    return RateRule(f"{scope}:{name}", name, scope, unit, Rate(limit, period_ns))  # type: ignore[arg-type]


async def count_granted(backend: LimitBackend, rates: Sequence[RateRule], n: int) -> int:
    results = [await backend.acquire(rates, [], 0) for _ in range(n)]
    return sum(isinstance(result, Grant) for result in results)


async def test_money_beyond_two_to_the_53_is_counted_to_the_picodollar(redis) -> None:
    ledger = Ledger()
    ledger.rows.append((USER, 0, 2**60))  # about $1.15M spent before counting began
    backend = backend_on(redis, ledger, Clock())
    rule = SpendRule(USER, "credits", 2**60 + 3, None)
    assert [isinstance(await backend.acquire([], [rule], 1), Grant) for _ in range(4)] == [
        True,
        True,
        True,
        False,  # 2^60 + 3 reserved reaches the cap; doubles could not tell these apart
    ]
    assert await backend.spent(USER, None) == 2**60
    assert await backend.reserved(USER) == 3


async def test_a_large_token_limit_stays_exact(redis) -> None:
    backend = backend_on(redis, clock=Clock())
    tpd = per(USER, "tokens_per_day", 10**9, DAY, "tokens")
    assert rule_unit(tpd.rate) == (3, 86_400)  # whole seconds keep 10^9 per day exact
    assert rule_unit(Rate(100, 60 * SECOND)) == (0, 60 * SECOND)  # small ones: nanoseconds
    grant = await backend.acquire([tpd], [], 0)
    assert isinstance(grant, Grant)
    await backend.commit(grant, [tpd], [USER], 123_456_789, 0)
    [state] = await backend.peek([tpd])
    assert state.remaining == 10**9 - 123_456_789


async def test_two_instances_share_one_rate_limit(redis) -> None:
    _, prefix = redis
    other = Redis.from_url(REDIS_URL)
    try:
        first = backend_on(redis)  # the Redis server's clock, as in production
        second = backend_on((other, prefix))
        rpm = per(USER, "requests_per_minute", 5, 60 * SECOND)
        granted = [
            isinstance(await backend.acquire([rpm], [], 0), Grant)
            for backend in [first, second] * 5
        ]
        assert granted.count(True) == 5
        refusal = await second.acquire([rpm], [], 0)
        assert isinstance(refusal, Refusal)
        assert 0 < refusal.retry_after_ns <= 12 * SECOND  # one request back every 12 s
    finally:
        await other.aclose()


async def test_every_key_of_one_user_sits_in_one_cluster_slot(redis) -> None:
    client, prefix = redis
    backend = backend_on(redis, clock=Clock())
    rates = [per(USER, "requests_per_minute", 5, 60 * SECOND),
             per(KEY, "tokens_per_minute", 500, 60 * SECOND, "tokens")]  # fmt: skip
    spends = [
        SpendRule(USER, "budget", 10**12, NOW.date()),
        SpendRule(KEY, "credits", 10**12, None),
    ]
    grant = await backend.acquire(rates, spends, 100)
    assert isinstance(grant, Grant)
    await backend.commit(grant, rates[1:], [USER, KEY], 40, 70)
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    assert len(keys) >= 5  # rate states, spend hashes, reservation sets, the id counter
    assert {key_slot(key) for key in keys} == {key_slot(f"{{{scope_tag(KEY)}}}".encode())}
    assert scope_tag(USER) == scope_tag(KEY) == "alice"


async def test_counters_are_rebuilt_from_the_ledger_after_a_flush(redis) -> None:
    client, prefix = redis
    ledger, clock = Ledger(), Clock()
    backend = backend_on(redis, ledger, clock)
    budget = SpendRule(USER, "budget", 1_000, NOW.date())

    async def settle(pico: int) -> None:
        grant = await backend.acquire([], [budget], 100)
        assert isinstance(grant, Grant)
        clock.now_ns += SECOND
        ledger.rows.append((USER, clock.now_ns, pico))  # the row is written, then settled
        await backend.commit(grant, [], [USER], 0, pico)
        clock.now_ns += SECOND

    await settle(300)
    await settle(400)
    assert await backend.spent(USER, NOW.date()) == 700
    await flush(client, prefix)  # Redis lost everything
    assert await backend.reserved(USER) == 0
    assert await backend.spent(USER, NOW.date()) == 700  # from the ledger
    await settle(200)
    assert await backend.spent(USER, NOW.date()) == 900  # the new row counted once
    assert isinstance(await backend.acquire([], [budget], 100), Grant)  # 900 < 1,000
    assert isinstance(await backend.acquire([], [budget], 100), Refusal)  # 900 + 100 held


def stamped(ns: int) -> datetime:
    """The ledger timestamp of an instant, to the microsecond."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


async def test_a_request_in_flight_when_counting_begins_is_counted_once(redis) -> None:
    ledger, clock = Ledger(), Clock()
    backend = backend_on(redis, ledger, clock)
    row = clock.now_ns
    ledger.rows.append((USER, row, 300))  # the request ended: its row is stamped ...
    clock.now_ns += SECOND // 1000
    assert await backend.spent(USER, NOW.date()) == 300  # ... counting begins: in the baseline
    clock.now_ns += SECOND // 1000
    await backend.commit(Grant(), [], [USER], 0, 300, stamped(row))  # ... then it settles
    assert await backend.spent(USER, NOW.date()) == 300


async def test_requests_ending_together_on_a_scope_never_seen_are_counted_once(redis) -> None:
    ledger, clock = Ledger(), Clock()
    backend = backend_on(redis, ledger, clock)  # a scope only settlements reach (no budget)
    rows = [clock.now_ns, clock.now_ns + SECOND // 1000]
    ledger.rows += [(USER, rows[0], 300), (USER, rows[1], 400)]
    clock.now_ns += SECOND // 100  # both settle after both rows were stamped
    await backend.commit(Grant(), [], [USER], 0, 300, stamped(rows[0]))  # counting begins
    clock.now_ns += SECOND // 1000
    await backend.commit(Grant(), [], [USER], 0, 400, stamped(rows[1]))
    clock.now_ns += SECOND
    ledger.rows.append((USER, clock.now_ns, 50))
    await backend.commit(Grant(), [], [USER], 0, 50, stamped(clock.now_ns))
    assert await backend.spent(USER, NOW.date()) == 750


async def test_a_row_stamped_ahead_of_the_redis_clock_is_counted_once(redis) -> None:
    ledger, clock = Ledger(), Clock()
    backend = backend_on(redis, ledger, clock)
    ahead = clock.now_ns + SECOND  # the gateway's clock runs a second ahead of Redis's
    ledger.rows.append((USER, ahead, 300))
    await backend.commit(Grant(), [], [USER], 0, 300, stamped(ahead))  # counting begins
    clock.now_ns += 2 * SECOND
    assert await backend.spent(USER, NOW.date()) == 300


async def test_a_row_stamped_before_midnight_and_settled_after_counts_on_its_day(redis) -> None:
    ledger, clock = Ledger(), Clock()
    backend = backend_on(redis, ledger, clock)
    midnight = (clock.now_ns // DAY + 1) * DAY
    clock.now_ns = midnight - 2 * SECOND // 1000
    today, tomorrow = NOW.date(), NOW.date() + timedelta(days=1)
    assert await backend.spent(USER, today) == 0  # counting begins
    row = midnight - SECOND // 1000
    ledger.rows.append((USER, row, 300))
    clock.now_ns = midnight + 10 * SECOND // 1000
    await backend.commit(Grant(), [], [USER], 0, 300, stamped(row))
    assert await backend.spent(USER, today) == 300
    assert await backend.spent(USER, tomorrow) == 0  # as the ledger has it


# the outage settings


class Unreachable:
    """A backend whose store is down until told otherwise; records what reached it."""

    def __init__(self) -> None:
        self.down = True
        self.settled: list[int] = []

    async def acquire(self, rates, spends, reserve_pico) -> Grant | Refusal:  # type: ignore[no-untyped-def]
        if self.down:
            raise RedisConnectionError("Error 111 connecting to redis://:secret@10.0.0.1:6379")
        return Grant()

    async def commit(self, grant, token_rules, scopes, tokens, cost_pico, at=None) -> None:  # type: ignore[no-untyped-def]
        if self.down:
            raise RedisConnectionError("Connection refused")
        self.settled.append(cost_pico)

    async def spent(self, scope: str, since: date | None) -> int:
        raise RedisConnectionError("Connection refused")

    async def reserved(self, scope: str) -> int:
        raise RedisConnectionError("Connection refused")

    async def peek(self, rates):  # type: ignore[no-untyped-def]
        raise RedisConnectionError("Connection refused")


RPM = per(USER, "requests_per_minute", 5, 60 * SECOND)
BUDGET = SpendRule(USER, "budget", 1_000, NOW.date())


@pytest.mark.parametrize(
    ("limits_open", "budgets_open", "rates", "spends", "admitted"),
    [
        (True, False, [RPM], [], True),  # the defaults: limits open ...
        (True, False, [RPM], [BUDGET], False),  # ... budgets closed
        (True, False, [], [BUDGET], False),
        (False, True, [RPM], [], False),
        (False, True, [], [BUDGET], True),
        (True, True, [RPM], [BUDGET], True),
        (False, False, [], [], True),  # nothing to check: nothing to refuse for
    ],
)
async def test_redis_down_admits_or_refuses_as_configured(
    limits_open: bool,
    budgets_open: bool,
    rates: list[RateRule],
    spends: list[SpendRule],
    admitted: bool,
) -> None:
    guard = OutageGuard(Unreachable(), limits_fail_open=limits_open, budgets_fail_open=budgets_open)
    if admitted:
        assert await guard.acquire(rates, spends, 10) == Grant()
    else:
        with pytest.raises(LimitsUnavailable) as refused:
            await guard.acquire(rates, spends, 10)
        assert refused.value.status == 503
        assert "secret" not in refused.value.message
    assert guard.down


async def test_settlements_made_while_down_are_replayed_in_order() -> None:
    store = Unreachable()
    guard = OutageGuard(store, limits_fail_open=True, budgets_fail_open=True)
    for cost in (1, 2, 3):
        await guard.commit(Grant(), [], [USER], 0, cost)
    assert guard.backlog == 3
    store.down = False
    await guard.commit(Grant(), [], [USER], 0, 4)  # queued behind the others
    await guard.wait_replayed()
    assert guard.backlog == 0
    assert store.settled == [1, 2, 3, 4]
    assert not guard.down
    await guard.close()


async def test_reads_while_down_are_a_503() -> None:
    guard = OutageGuard(Unreachable(), limits_fail_open=True, budgets_fail_open=True)
    with pytest.raises(LimitsUnavailable):
        await guard.spent(USER, None)
