"""The real servers some tests use: scratch databases on PostgreSQL and MariaDB, and Redis.

Each database server gets a scratch database `spendgate_test_<hex>`, created on first use in
a session (so concurrent runs and other suites sharing the server never see each other's
tables) and dropped at its end; tests wipe it before use. Redis is shared: each test keeps
to its own key prefix and deletes its keys afterwards. A server that cannot be used skips
its tests with the reason, unless `CI=true`, where they fail. Override the servers with
SPENDGATE_TEST_POSTGRES_URL, SPENDGATE_TEST_MYSQL_URL and SPENDGATE_TEST_REDIS_URL.
"""

import os
import secrets
from typing import NoReturn

import pytest
from redis.asyncio import Redis
from sqlalchemy import Connection, MetaData, text
from sqlalchemy.engine import make_url

from spendgate.ledger.engine import create_engine, normalize_database_url

SERVER_URLS = {
    "postgresql": os.environ.get(
        "SPENDGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("SPENDGATE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
REDIS_URL = os.environ.get("SPENDGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unusable(reason: str) -> NoReturn:
    """Skip the test for a missing server; fail it under `CI=true`, where servers must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _where(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def _create_scratch_database(backend: str) -> str:
    """Create a database for this session on the server and return its URL."""
    admin_url = make_url(normalize_database_url(SERVER_URLS[backend]))
    name = f"spendgate_test_{secrets.token_hex(4)}"
    admin = create_engine(admin_url.render_as_string(hide_password=False))
    try:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f"CREATE DATABASE {name}"))
    finally:
        await admin.dispose()
    return admin_url.set(database=name).render_as_string(hide_password=False)


async def _drop_database(backend: str, url: str) -> None:
    force = " WITH (FORCE)" if backend == "postgresql" else ""
    admin = create_engine(SERVER_URLS[backend])
    try:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f"DROP DATABASE IF EXISTS {make_url(url).database}{force}"))
    finally:
        await admin.dispose()


def _drop_every_table(conn: Connection) -> None:
    tables = MetaData()
    tables.reflect(conn)
    tables.drop_all(conn)


async def wipe_database(url: str) -> None:
    """Drop every table of the database at `url`, leaving it empty and unmigrated."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_drop_every_table)
    finally:
        await engine.dispose()


class ServerDatabases:
    """Per-session scratch databases, and why a server could not be used."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    async def url_for(self, backend: str) -> str:
        """The scratch database URL; skips (fails on CI) if the server is unusable."""
        if backend not in self.urls and backend not in self.errors:
            try:
                self.urls[backend] = await _create_scratch_database(backend)
            except Exception as error:
                self.errors[backend] = (
                    f"{backend} server not usable at {_where(SERVER_URLS[backend])}: "
                    f"{type(error).__name__}: {error}"
                )
        if backend in self.errors:
            unusable(self.errors[backend])
        return self.urls[backend]

    async def drop_all(self) -> None:
        """Drop every scratch database this session created."""
        for backend, url in self.urls.items():
            await _drop_database(backend, url)


class RedisServer:
    """The Redis server, pinged once per session, and why it could not be used."""

    def __init__(self, url: str = REDIS_URL) -> None:
        self.url = url
        self._client: Redis | None = None
        self._error: str | None = None

    async def client(self) -> Redis:
        """A client for the server; skips (fails on CI) if it did not answer a PING."""
        if self._client is None and self._error is None:
            client = Redis.from_url(self.url)
            try:
                await client.ping()
                self._client = client
            except Exception as error:
                await client.aclose()
                self._error = (
                    f"redis server not usable at {_where(self.url)}: "
                    f"{type(error).__name__}: {error}"
                )
        if self._client is None:
            unusable(str(self._error))
        return self._client

    async def delete_keys(self, prefix: str) -> None:
        """Delete every key whose name starts with `prefix`."""
        client = await self.client()
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)

    async def close(self) -> None:
        """Close the client, if one was opened."""
        if self._client is not None:
            await self._client.aclose()
