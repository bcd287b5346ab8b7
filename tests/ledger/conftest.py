"""Ledger fixtures: one migrated, empty database per test on SQLite, PostgreSQL and MariaDB.

The server backends use the session's scratch database (tests/services.py: how it is made,
when a server is skipped, the environment variables naming the servers), wiped before every
test.
"""

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.engine import create_engine, upgrade
from spendgate.ledger.events import UsageEvent
from tests.services import ServerDatabases, wipe_database

BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mysql", marks=pytest.mark.services),
]


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
    await wipe_database(url)
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
