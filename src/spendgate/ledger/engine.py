"""Database URLs, the async engine per backend, and running the Alembic migrations."""

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The newest migration's revision (a test checks it against Alembic's head). A database
# already there is not handed to Alembic at all: importing and running it costs the
# gateway ~15 MB of memory for the life of the process.
SCHEMA_HEAD = "0006"

_MIGRATION_LOCK = 0x5E4D6A7E  # PostgreSQL advisory lock id for "spendgate migrates"

# scheme as users write it -> the async driver form the engine needs
_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
    "mysql+aiomysql": "mysql+aiomysql",
    "mariadb+aiomysql": "mysql+aiomysql",
}
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)


def normalize_database_url(url: str) -> str:
    """Rewrite a SQLAlchemy URL to its async-driver form; ValueError for other schemes."""
    scheme, sep, rest = url.partition("://")
    target = _SCHEMES.get(scheme.lower()) if sep else None
    if target is None:
        # Only the scheme is named: the rest of the URL may hold a password.
        raise ValueError(f"unsupported database URL scheme '{scheme if sep else ''}'")
    return f"{target}://{rest}"


def sqlite_url_for_path(path: str) -> str:
    """The async SQLite URL for a database file path (relative or absolute)."""
    return f"sqlite+aiosqlite:///{path}"


def create_engine(url: str) -> AsyncEngine:
    """Create the async engine for `url`: SQLite with WAL pragmas, pooled servers otherwise."""
    parsed = make_url(normalize_database_url(url))
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "mysql" and "charset" not in parsed.query:
        connect_args["charset"] = "utf8mb4"
    return create_async_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def alembic_config(connection: Connection | None = None) -> "Config":
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


def schema_revision(connection: Connection) -> str | None:
    """The revision the database is at, or None before the first migration."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate the database to the newest schema revision (nothing to do: no Alembic).

    Several instances starting together on one server database take turns: the first
    migrates under a database lock, the others find the schema at head once they get it.
    """
    async with engine.begin() as conn:
        if await conn.run_sync(schema_revision) == SCHEMA_HEAD:
            return
        backend = conn.dialect.name
        if backend == "postgresql":  # held until this transaction ends
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
        elif backend == "mysql":
            await conn.execute(text("SELECT GET_LOCK('spendgate_migrate', 300)"))
        try:
            if await conn.run_sync(schema_revision) != SCHEMA_HEAD:
                await conn.run_sync(_upgrade_to_head)
        finally:
            if backend == "mysql":
                await conn.execute(text("SELECT RELEASE_LOCK('spendgate_migrate')"))


def upgrade_sync(url: str) -> None:
    """Migrate the database at `url` to head (for the CLI; runs its own event loop)."""

    async def run() -> None:
        engine = create_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
