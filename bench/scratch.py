"""Scratch PostgreSQL databases and Redis key prefixes, made for one target and removed after.

A target on a server database gets a database of its own (`spendgate_bench_<hex>`), so two
benchmark runs, or a bench and the test suite, never share one; a target on Redis gets a key
prefix of its own for the same reason. Both check the server answers before the target
starts: an unreachable server raises `TargetUnavailable`, and the target is skipped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass

from redis import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url

from procs import TargetUnavailable
from spendgate.ledger.engine import create_engine, normalize_database_url

POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT_S = 15


def _where(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class ScratchDatabase:
    """A PostgreSQL database `spendgate_bench_<hex>` on the server of `admin_url`."""

    name: str
    admin_url: str = POSTGRES_ADMIN_URL

    @classmethod
    def new(cls) -> ScratchDatabase:
        return cls(f"spendgate_bench_{secrets.token_hex(4)}")

    @property
    def url(self) -> str:
        """The database's own URL (the admin URL with its name)."""
        url = make_url(self.admin_url).set(database=self.name)
        return url.render_as_string(hide_password=False)

    def create(self) -> None:
        """Create it; `TargetUnavailable` if the server cannot be used."""
        try:
            asyncio.run(self._execute(f"CREATE DATABASE {self.name}"))
        except Exception as exc:
            where = _where(self.admin_url)
            raise TargetUnavailable(
                f"PostgreSQL not usable at {where}: {type(exc).__name__}: {exc}"
            ) from None

    def drop(self) -> None:
        """Drop it, closing any connection left to it."""
        asyncio.run(self._execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"))

    async def _execute(self, statement: str) -> None:
        admin = create_engine(normalize_database_url(self.admin_url))
        try:
            async with asyncio.timeout(TIMEOUT_S), admin.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(statement))
        finally:
            await admin.dispose()


@dataclass(frozen=True)
class RedisCounters:
    """What a gateway left under its prefix, read after it stopped."""

    keys: int  # rate states, spend counters, reservation sets, the reservation id counter
    reservations: int  # admissions that reserved budget (the `…:ids` counters, summed)
    reserved_pico: int  # budget still reserved (the spend hashes' `r` fields, summed)


@dataclass(frozen=True)
class ScratchRedis:
    """A key prefix `spendgate-bench-<hex>` on the Redis server at `url`."""

    prefix: str
    url: str = REDIS_URL

    @classmethod
    def new(cls) -> ScratchRedis:
        return cls(f"spendgate-bench-{secrets.token_hex(4)}")

    def _client(self) -> Redis:
        return Redis.from_url(self.url, socket_timeout=TIMEOUT_S, socket_connect_timeout=5)

    def ping(self) -> None:
        """`TargetUnavailable` unless the server answers a PING."""
        try:
            with self._client() as client:
                client.ping()
        except Exception as exc:
            raise TargetUnavailable(
                f"Redis not usable at {_where(self.url)}: {type(exc).__name__}: {exc}"
            ) from None

    def counters(self) -> RedisCounters:
        """Count the prefix's keys, the reservations taken and the budget still reserved."""
        with self._client() as client:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            ids = [k for k in keys if k.endswith(b":ids")]
            spends = [k for k in keys if b":spend:" in k]
            taken = sum(int(v or 0) for v in client.mget(ids)) if ids else 0
            held = sum(int(client.hget(k, "r") or 0) for k in spends)
        return RedisCounters(len(keys), taken, held)

    def delete(self) -> None:
        """Delete every key under the prefix."""
        with self._client() as client:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
