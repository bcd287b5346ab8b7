"""Database URLs, engine set-up and migrations on every backend."""

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.engine import (
    SCHEMA_HEAD,
    create_engine,
    normalize_database_url,
    sqlite_url_for_path,
    upgrade,
    upgrade_sync,
)
from spendgate.ledger.schema import Base, User

LEDGER_TABLES = {
    "users",
    "api_keys",
    "usage_events",
    "usage_daily",
    "usage_daily_user",
    "meta",
    "credit_transactions",
    "tracking_tokens",
    "alerts",
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///./data/x.db", "sqlite+aiosqlite:///./data/x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgres://u@h:5433/db", "postgresql+asyncpg://u@h:5433/db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
        ("mysql://root@h/db?charset=utf8mb4", "mysql+aiomysql://root@h/db?charset=utf8mb4"),
        ("mariadb://root@h/db", "mysql+aiomysql://root@h/db"),
        ("mysql+aiomysql://root@h/db", "mysql+aiomysql://root@h/db"),
    ],
)
def test_database_urls_are_rewritten_to_async_drivers(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("oracle://scott:tiger@h/db", "oracle"),
        ("postgresql+psycopg2://u:hunter2@h/db", "postgresql+psycopg2"),
        ("not a url with hunter2", ""),
    ],
)
def test_unsupported_url_is_refused_without_the_password(url: str, scheme: str) -> None:
    with pytest.raises(ValueError, match="unsupported database URL scheme") as caught:
        normalize_database_url(url)
    assert str(caught.value) == f"unsupported database URL scheme '{scheme}'"
    assert "hunter2" not in str(caught.value)
    assert "tiger" not in str(caught.value)


def test_sqlite_url_for_path() -> None:
    assert sqlite_url_for_path("data/spendgate.db") == "sqlite+aiosqlite:///data/spendgate.db"
    assert sqlite_url_for_path("/var/lib/sg.db") == "sqlite+aiosqlite:////var/lib/sg.db"


async def test_sqlite_engine_creates_directory_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "ledger.db"
    engine = create_engine(sqlite_url_for_path(str(path)))
    try:
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        await engine.dispose()
    assert path.parent.is_dir()
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 1,
        "busy_timeout": 5000,
        "foreign_keys": 1,
    }


def _schema_differences(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _table_names(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


async def test_migration_from_empty_matches_the_models(backend: str, database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert not (await conn.run_sync(_table_names)) & LEDGER_TABLES
        await upgrade(engine)
        await upgrade(engine)  # already at head: nothing to do, no error
        async with engine.connect() as conn:
            tables = await conn.run_sync(_table_names)
            differences = await conn.run_sync(_schema_differences)
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            generation = (await conn.execute(text("SELECT name, value FROM meta"))).all()
    finally:
        await engine.dispose()
    assert tables >= LEDGER_TABLES
    assert differences == []
    assert [tuple(row) for row in version] == [(SCHEMA_HEAD,)] == [("0006",)]
    assert [tuple(row) for row in generation] == [("principal_generation", 0)]


async def test_datetimes_read_back_as_aware_utc(backend: str, engine: AsyncEngine) -> None:
    plus_two = timezone(timedelta(hours=2))
    written = datetime(2025, 6, 1, 14, 30, 15, 123456, tzinfo=plus_two)
    async with engine.begin() as conn:
        await conn.execute(User.__table__.insert().values(name="tz", created_at=written))
        read = (await conn.execute(select(User.created_at))).scalar_one()
    assert read.tzinfo is not None
    assert read.utcoffset() == timedelta(0)
    assert read == written
    assert read == datetime(2025, 6, 1, 12, 30, 15, 123456, tzinfo=UTC)


def test_upgrade_sync_migrates_a_new_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "cli" / "ledger.db"
    upgrade_sync(f"sqlite:///{path}")
    assert path.exists()


def test_schema_head_is_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    from spendgate.ledger.engine import SCHEMA_HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_HEAD


def test_a_database_at_head_starts_without_loading_alembic(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = sqlite_url_for_path(str(tmp_path / "ledger.db"))
    upgrade_sync(url)  # migrated here, with Alembic
    probe = (
        "import asyncio, sys\n"
        "from spendgate.ledger.engine import create_engine, upgrade\n"
        f"engine = create_engine({url!r})\n"
        "asyncio.run(upgrade(engine))\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'alembic'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stderr


async def test_instances_starting_together_migrate_once(backend: str, database_url: str) -> None:
    if backend == "sqlite":
        pytest.skip("one file, one writer: SQLite instances share a host and start in turn")
    engines = [create_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(upgrade(engine) for engine in engines))
        async with engines[0].connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    finally:
        for engine in engines:
            await engine.dispose()
    assert [tuple(row) for row in version] == [(SCHEMA_HEAD,)]
