"""Settlements that meet a Redis cut: kept by the outage guard, replayed once Redis is back,
and applied exactly once.

A real Redis behind a `CuttableProxy` the test cuts; the backend runs on a fake clock, so a
reservation's deadline moves only when the test moves it and nothing here waits for a TTL.
"""

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from spendgate.limits.backend import Grant, SpendRule
from spendgate.limits.outage import OutageGuard
from spendgate.limits.redis import RedisBackend
from tests.faults import CuttableProxy
from tests.limits.test_redis_backend import NOW, SECOND, USER, Clock, Ledger, per, stamped
from tests.services import RedisServer

pytestmark = pytest.mark.services

TTL_NS = 900 * SECOND  # the default reservation TTL: a test that waited for it would fail
BUDGET = SpendRule(USER, "budget", 10**9, NOW.date())
TPM = per(USER, "tokens_per_minute", 1_000, 60 * SECOND, "tokens")


@dataclass
class Link:
    """A backend and its outage guard reaching Redis through a proxy, and a direct client."""

    proxy: CuttableProxy
    direct: Redis
    prefix: str
    clock: Clock
    ledger: Ledger
    backend: RedisBackend
    guard: OutageGuard

    async def settled(self, scope: str) -> int:
        """What Redis counted for `scope` since counting began, read past the proxy."""
        return int(await self.direct.hget(f"{self.prefix}:{{alice}}:spend:{scope}", "t") or 0)

    def held(self, scope: str) -> str:
        """The scope's reservation set (a sorted set of `id:amount` members)."""
        return f"{self.prefix}:{{alice}}:held:{scope}"

    def other_instance(self) -> RedisBackend:
        """A second gateway's backend on the same Redis, ledger and clock, not behind the proxy."""
        return RedisBackend(
            self.direct,
            self.ledger.history,
            prefix=self.prefix,
            reservation_ttl_ns=TTL_NS,
            settle_ns=0,
            clock=self.clock,
        )

    async def lose_data(self) -> None:
        """Redis restarts empty (no persistence), as far as this test's keys go."""
        keys = [key async for key in self.direct.scan_iter(match=f"{self.prefix}:*")]
        if keys:
            await self.direct.delete(*keys)

    def row(self, pico: int) -> datetime:
        """The ledger row of a request that ends now (written before it settles); its time."""
        self.ledger.rows.append((USER, self.clock.now_ns, pico))
        return stamped(self.clock.now_ns)


def through(url: str, port: int) -> str:
    """`url` pointed at 127.0.0.1:`port`, keeping its credentials and database."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(
        parts._replace(netloc=f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}")
    )


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[Link]:
    direct = await redis_server.client()  # skips (fails on CI) without Redis
    target = urlsplit(redis_server.url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    client = Redis.from_url(
        through(redis_server.url, proxy.port), socket_timeout=5, socket_connect_timeout=5
    )
    prefix = f"sgtest-{secrets.token_hex(4)}"
    clock, ledger = Clock(), Ledger()
    backend = RedisBackend(
        client, ledger.history, prefix=prefix, reservation_ttl_ns=TTL_NS, settle_ns=0, clock=clock
    )
    guard = OutageGuard(backend, limits_fail_open=True, budgets_fail_open=False)
    try:
        yield Link(proxy, direct, prefix, clock, ledger, backend, guard)
    finally:
        await guard.close()
        await client.aclose()
        await proxy.stop()
        await redis_server.delete_keys(prefix)


async def test_a_settlement_kept_through_a_cut_releases_its_reservation(link: Link) -> None:
    grant = await link.guard.acquire([], [BUDGET], 100)
    assert isinstance(grant, Grant) and grant.reservation is not None
    assert await link.direct.zcard(link.held(USER)) == 1

    await link.proxy.cut()
    await link.guard.commit(grant, [], [USER], 0, 40, link.row(40))
    assert link.guard.backlog == 1  # kept for replay
    link.proxy.restore()
    await link.guard.wait_replayed()

    assert link.guard.backlog == 0
    # The fake clock has not moved: nothing expired, the replay itself released it.
    assert await link.direct.zcard(link.held(USER)) == 0
    assert await link.guard.reserved(USER) == 0
    assert await link.guard.spent(USER, NOW.date()) == 40
    assert link.backend.repeats_skipped == 0  # the cut came first: the retry applied it


async def test_a_settlement_applied_but_unanswered_is_not_counted_again(link: Link) -> None:
    earlier = await link.guard.acquire([TPM], [BUDGET], 100)
    assert isinstance(earlier, Grant)
    await link.guard.commit(earlier, [TPM], [USER], 10, 25, link.row(25))  # settles normally
    grant = await link.guard.acquire([TPM], [BUDGET], 100)
    assert isinstance(grant, Grant)

    link.proxy.lose_next_reply()
    await link.guard.commit(grant, [TPM], [USER], 30, 40, link.row(40))
    assert link.guard.backlog == 1  # no answer: kept for replay
    # ... though Redis applied it: the reservation is gone and the cost counted.
    assert await link.direct.zcard(link.held(USER)) == 0
    assert await link.settled(USER) == 25 + 40
    link.proxy.restore()
    await link.guard.wait_replayed()

    assert link.guard.backlog == 0
    assert await link.guard.spent(USER, NOW.date()) == 25 + 40  # the ledger's two rows
    [tokens] = await link.guard.peek([TPM])
    assert tokens.remaining == 1_000 - 10 - 30  # charged once
    assert await link.guard.reserved(USER) == 0
    assert link.backend.repeats_skipped == 1


async def test_a_delayed_first_try_arriving_after_its_retry_is_not_counted_again(
    link: Link,
) -> None:
    grant = await link.guard.acquire([TPM], [BUDGET], 100)
    assert isinstance(grant, Grant)
    at = link.row(40)
    first = replace(grant)  # the first try, held up in the network ...
    await link.backend.commit(grant, [TPM], [USER], 30, 40, at)  # ... behind its retry
    await link.backend.commit(first, [TPM], [USER], 30, 40, at)

    assert await link.guard.spent(USER, NOW.date()) == 40
    [tokens] = await link.guard.peek([TPM])
    assert tokens.remaining == 1_000 - 30
    assert link.backend.repeats_skipped == 1


async def test_a_settlement_kept_past_its_reservation_deadline_is_counted(link: Link) -> None:
    grant = await link.guard.acquire([TPM], [BUDGET], 100)
    assert isinstance(grant, Grant)
    await link.proxy.cut()
    at = link.row(40)
    await link.guard.commit(grant, [TPM], [USER], 30, 40, at)
    link.clock.now_ns += TTL_NS + SECOND  # an outage longer than the reservation TTL
    assert await link.other_instance().reserved(USER) == 0  # expired meanwhile
    link.proxy.restore()
    await link.guard.wait_replayed()

    assert await link.guard.spent(USER, NOW.date()) == 40
    [tokens] = await link.guard.peek([TPM])
    assert tokens.remaining == 1_000 - 30
    assert await link.guard.reserved(USER) == 0
    assert link.backend.repeats_skipped == 0


async def test_a_request_in_flight_when_redis_loses_its_data_is_counted(link: Link) -> None:
    grant = await link.guard.acquire([], [BUDGET], 100)
    assert isinstance(grant, Grant)
    await link.lose_data()
    link.clock.now_ns += SECOND
    assert await link.guard.spent(USER, NOW.date()) == 0  # counting starts again
    link.clock.now_ns += SECOND
    at = link.row(40)
    await link.guard.commit(grant, [], [USER], 0, 40, at)

    assert await link.guard.spent(USER, NOW.date()) == 40  # after counting restarted: Redis's
    assert await link.guard.reserved(USER) == 0
    assert link.backend.repeats_skipped == 0


async def test_a_settlement_kept_while_redis_lost_its_data_is_counted_once(link: Link) -> None:
    grant = await link.guard.acquire([], [BUDGET], 100)
    assert isinstance(grant, Grant)
    await link.proxy.cut()
    link.clock.now_ns += SECOND
    at = link.row(40)
    await link.guard.commit(grant, [], [USER], 0, 40, at)  # kept
    await link.lose_data()  # Redis restarts empty ...
    link.clock.now_ns += SECOND
    other = link.other_instance()  # ... and another gateway reaches it first,
    again = await other.acquire([], [BUDGET], 100)  # rebuilding the count from the ledger
    assert isinstance(again, Grant)
    await other.commit(again, [], [USER], 0, 7, link.row(7))
    link.proxy.restore()
    await link.guard.wait_replayed()

    # The kept settlement's row is older than the rebuilt count, which holds it: its
    # replay applies (Redis lost the reservation) but adds no cost.
    assert await link.guard.spent(USER, NOW.date()) == 40 + 7
    assert await link.guard.reserved(USER) == 0
    assert link.backend.repeats_skipped == 0
