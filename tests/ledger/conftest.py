"""Ledger fixtures: one migrated, empty database per test on SQLite, PostgreSQL and MariaDB.

The server backends use a scratch database created for the session (so concurrent runs and
other suites sharing the server never see each other's tables) and wiped before every test.
Unreachable servers skip their tests with the reason, unless `CI=true`, where they fail.
Override the servers with SPENDGATE_TEST_POSTGRES_URL / SPENDGATE_TEST_MYSQL_URL.
"""

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.engine import create_engine, normalize_database_url, upgrade
from spendgate.ledger.events import UsageEvent

SERVER_URLS = {
    "postgresql": os.environ.get(
        "SPENDGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("SPENDGATE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mysql", marks=pytest.mark.services),
]


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
                where = make_url(SERVER_URLS[backend]).render_as_string(hide_password=True)
                self.errors[backend] = (
                    f"{backend} server not usable at {where}: {type(error).__name__}: {error}"
                )
        if backend in self.errors:
            if os.environ.get("CI") == "true":
                pytest.fail(self.errors[backend])
            pytest.skip(self.errors[backend])
        return self.urls[backend]


@pytest.fixture(scope="session")
async def server_databases() -> AsyncIterator[ServerDatabases]:
    """Scratch databases created on first use, dropped at the end of the session."""
    databases = ServerDatabases()
    yield databases
    for backend, url in databases.urls.items():
        await _drop_database(backend, url)


def _drop_everything(conn: Connection) -> None:
    tables = MetaData()
    tables.reflect(conn)
    tables.drop_all(conn)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name of the parametrised test."""
    return str(request.param)


@pytest.fixture
async def database_url(
    backend: str, tmp_path: Path, server_databases: ServerDatabases
) -> AsyncIterator[str]:
    """URL of an empty database on `backend` (nothing migrated yet)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    url = await server_databases.url_for(backend)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_drop_everything)
    finally:
        await engine.dispose()
    yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a freshly migrated, empty ledger; disposed after the test."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses the `backend` fixture once per backend."""
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


EventFactory = Callable[..., UsageEvent]


@pytest.fixture
def make_event() -> Iterator[EventFactory]:
    """Build usage events with sensible defaults and unique request ids."""
    counter = iter(range(1, 10**9))

    def build(**fields: Any) -> UsageEvent:
        number = next(counter)
        values: dict[str, Any] = {
            "request_id": f"req-{number:06d}-{secrets.token_hex(4)}",
            "timestamp": datetime(2025, 3, 14, 12, 0, number % 60, number, tzinfo=UTC),
            "user": "alice",
            "key_id": None,
            "model": "gpt-4o-mini",
            "endpoint": "chat/completions",
            "method": "POST",
            "status": 200,
            "stream": False,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "total_tokens": 15,
            "cost_usd": Decimal("0.000004500001"),
            "latency_ms": 120,
        }
        values.update(fields)
        return UsageEvent(**values)

    yield build
