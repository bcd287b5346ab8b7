"""usage_events.provider_cost_pico: the writer, the CSV column and the 0006 migration."""

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, Table, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.engine import SCHEMA_HEAD, alembic_config, create_engine, upgrade
from spendgate.ledger.reports import UsageFilter, iter_usage_csv
from spendgate.ledger.schema import UsageEventRow
from spendgate.ledger.writer import LedgerWriter, write_events
from tests.ledger.conftest import EventFactory

DAY = date(2025, 3, 14)
EVENTS = cast(Table, UsageEventRow.__table__)


async def provider_costs(engine: AsyncEngine) -> dict[str, int | None]:
    query = select(UsageEventRow.request_id, UsageEventRow.provider_cost_pico)
    async with engine.connect() as conn:
        return {rid: cost for rid, cost in (await conn.execute(query)).all()}


async def test_the_writer_stores_the_reported_cost_or_null(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    reported = make_event(request_id="reported", provider_cost_pico=12_600_000)
    huge = make_event(request_id="huge", provider_cost_pico=999_999 * 10**12)
    silent = make_event(request_id="silent")
    assert silent.provider_cost_pico is None  # the default: existing constructors unchanged
    writer = LedgerWriter(engine, flush_interval=0.01)
    writer.start()
    for event in (reported, huge, silent):
        writer.record(event)
    await writer.stop()
    assert await provider_costs(engine) == {
        "reported": 12_600_000,
        "huge": 999_999 * 10**12,
        "silent": None,
    }


async def test_the_csv_names_the_upstream_and_the_reported_cost(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    await write_events(
        engine,
        [
            make_event(request_id="a", upstream="openrouter", provider_cost_pico=12_600_000),
            make_event(request_id="b", upstream="openai"),
        ],
    )
    chunks = [chunk async for chunk in iter_usage_csv(engine, UsageFilter(DAY, DAY))]
    rows = {row["request_id"]: row for row in csv.DictReader(io.StringIO("".join(chunks)))}
    assert (rows["a"]["upstream"], rows["a"]["provider_cost_usd"]) == ("openrouter", "0.0000126")
    assert (rows["b"]["upstream"], rows["b"]["provider_cost_usd"]) == ("openai", "")
    assert Decimal(rows["a"]["cost_usd"]) == Decimal("0.000004500001")


def _migrate(connection: Connection, direction: str, revision: str) -> None:
    from alembic import command

    getattr(command, direction)(alembic_config(connection), revision)


def _columns(connection: Connection) -> set[str]:
    return {column["name"] for column in inspect(connection).get_columns("usage_events")}


def _old_row() -> dict[str, Any]:
    """A usage_events row as a 0005 ledger holds it (no provider cost column yet)."""
    ts = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
    return {
        "request_id": "before-0006", "ts": ts, "day": ts.date(), "user_name": "alice",
        "model": "gpt-4o-mini", "endpoint": "chat/completions", "method": "POST",
        "status": 200, "stream": False, "prompt_tokens": 10, "completion_tokens": 5,
        "cached_tokens": 0, "reasoning_tokens": 0, "total_tokens": 15, "cost_pico": 7,
        "latency_ms": 100, "estimated": False, "source": "proxy",
    }  # fmt: skip


async def test_the_migration_from_0005_adds_the_column_and_reverts(
    backend: str, database_url: str, make_event: EventFactory
) -> None:
    assert SCHEMA_HEAD == "0006"
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "upgrade", "0005")
            assert "provider_cost_pico" not in await conn.run_sync(_columns)
            await conn.execute(insert(EVENTS).values(_old_row()))
        await upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT version_num FROM alembic_version")) == "0006"
            assert "provider_cost_pico" in await conn.run_sync(_columns)
        await write_events(engine, [make_event(request_id="after-0006", provider_cost_pico=42)])
        assert await provider_costs(engine) == {"before-0006": None, "after-0006": 42}

        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "downgrade", "0005")
            assert "provider_cost_pico" not in await conn.run_sync(_columns)
            count = await conn.scalar(text("SELECT COUNT(*) FROM usage_events"))
            assert count == 2  # the events stay, without their reported costs
        await upgrade(engine)
        assert await provider_costs(engine) == {"before-0006": None, "after-0006": None}
    finally:
        await engine.dispose()
