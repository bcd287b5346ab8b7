"""Settlements that meet a Redis cut: kept by the outage guard, replayed once Redis is back,
and applied exactly once.

A real Redis behind a `CuttableProxy` the test cuts; the backend runs on a fake clock, so a
reservation's deadline moves only when the test moves it and nothing here waits for a TTL.
"""

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from spendgate.limits.backend import Grant, SpendRule
from spendgate.limits.outage import OutageGuard
from spendgate.limits.redis import RedisBackend
from tests.faults import CuttableProxy
from tests.limits.test_redis_backend import NOW, SECOND, USER, Clock, Ledger
from tests.services import RedisServer

pytestmark = pytest.mark.services

TTL_NS = 900 * SECOND  # the default reservation TTL: a test that waited for it would fail
BUDGET = SpendRule(USER, "budget", 10**9, NOW.date())


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

    def held(self, scope: str) -> str:
        """The scope's reservation set (a sorted set of `id:amount` members)."""
        return f"{self.prefix}:{{alice}}:held:{scope}"


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
    await link.guard.commit(grant, [], [USER], 0, 40)
    assert link.guard.backlog == 1  # kept for replay
    link.proxy.restore()
    await link.guard.wait_replayed()

    assert link.guard.backlog == 0
    # The fake clock has not moved: nothing expired, the replay itself released it.
    assert await link.direct.zcard(link.held(USER)) == 0
    assert await link.guard.reserved(USER) == 0
    assert await link.guard.spent(USER, NOW.date()) == 40
