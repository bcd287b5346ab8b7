"""Alembic environment for the ledger.

`spendgate.ledger.engine.upgrade` hands over an open connection in
`config.attributes["connection"]`; the `alembic` command line may instead name a URL as
`sqlalchemy.url` (sync or async form), for autogenerate and offline SQL.
"""

import asyncio

from alembic import context
from sqlalchemy import Connection

from spendgate.ledger.engine import create_engine, normalize_database_url
from spendgate.ledger.schema import Base


def run_on(connection: Connection) -> None:
    """Run the pending migrations on an open connection."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters tables by copying them; batch mode does that for later revisions.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_on_url(url: str) -> None:
    """Connect to `url` and run the pending migrations."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_on)
    finally:
        await engine.dispose()


def main() -> None:
    """Entry point Alembic runs for every command."""
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    if context.is_offline_mode():
        context.configure(
            url=normalize_database_url(url),
            target_metadata=Base.metadata,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(run_on_url(url))


main()
