"""Limits shared by many instances through Redis: the client, the backend, the key channel.

Imported only when `SPENDGATE_REDIS_URL` is set. redis-py, with the OpenTelemetry SDK it
imports for its own metrics, costs every process ~9 MB of memory that a gateway keeping its
limits in process would carry for nothing.
"""

from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.config import Settings
from spendgate.keys.broadcast import KeyChanges
from spendgate.limits.baseline import ledger_history
from spendgate.limits.outage import OutageGuard
from spendgate.limits.redis import RedisBackend


@dataclass(frozen=True, slots=True)
class SharedLimits:
    """What a Redis deployment adds to the runtime."""

    redis: Redis
    guard: OutageGuard  # the limit backend, behind the fail-open / fail-closed settings
    key_changes: KeyChanges


def connect_shared_limits(
    settings: Settings, engine: AsyncEngine, on_key_change: Callable[[], None]
) -> SharedLimits:
    """The Redis client, the limit backend on it and the key-change channel (not started)."""
    redis = open_redis(settings)
    backend = RedisBackend(
        redis,
        ledger_history(engine),
        prefix=settings.redis_prefix,
        reservation_ttl_ns=int(settings.reservation_ttl_seconds * 1e9),
        # rows settled just before counting began are written within this
        settle_ns=(3 * settings.flush_interval_ms + 500) * 1_000_000,
    )
    guard = OutageGuard(
        backend,
        limits_fail_open=settings.redis_limits_on_error == "fail_open",
        budgets_fail_open=settings.redis_budgets_on_error == "fail_open",
    )
    channel = KeyChanges(redis, f"{settings.redis_prefix}:key-changes", on_key_change)
    return SharedLimits(redis, guard, channel)


def open_redis(settings: Settings) -> Redis:
    """The Redis client: a bounded pool where a caller waits for a free connection."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url or "",
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,  # the wait for a free connection
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
    )
    return Redis.from_pool(pool)
