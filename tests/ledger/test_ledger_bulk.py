"""The ledger's compiled INSERT: driver conversions equal SQLAlchemy's, rows stored as given."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select
from sqlalchemy.dialects.mysql import aiomysql
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.dialects.sqlite import aiosqlite

from spendgate.ledger.engine import create_engine, upgrade
from spendgate.ledger.schema import UsageEventRow
from spendgate.ledger.writer import driver_conversions, write_events

TABLE = UsageEventRow.__table__
MOMENTS = [
    datetime(2026, 11, 22, 13, 45, 1, 123, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 0, 0, 0, tzinfo=UTC),  # no microseconds: still written out
    datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 0, 0, 500000, tzinfo=UTC) + timedelta(microseconds=1),
]


@pytest.mark.parametrize(
    "dialect", [aiosqlite.dialect(), asyncpg.dialect(), aiomysql.dialect()], ids=lambda d: d.name
)
def test_driver_conversions_give_what_sqlalchemy_would(dialect) -> None:
    conversions = driver_conversions(dialect)
    samples = {"ts": MOMENTS, "day": [m.date() for m in MOMENTS] + [date(2026, 3, 1)]}
    samples |= {"stream": [True, False], "estimated": [True, False]}
    for column, values in samples.items():
        if column not in conversions:
            continue
        ours = conversions[column]
        theirs = TABLE.c[column].type.dialect_impl(dialect).bind_processor(dialect)
        for value in values:
            expected = theirs(value) if theirs else value
            got = ours(value) if ours else value
            assert got == expected and type(got) in (type(expected), bool), (column, value)


def varied_events(make_event, count: int) -> list:
    """Events whose every written column varies, None and unicode included."""
    return [
        make_event(
            user=f"user-{i % 7}-é",
            key_id=None if i % 5 == 0 else i % 3 + 1,
            key_display=None if i % 5 == 0 else f"sg-{i:04d}…wxyz",
            model=f"model-{i % 4}",
            requested_model=None if i % 6 == 0 else f"asked-{i % 4}",
            endpoint="embeddings" if i % 2 else "chat/completions",
            status=(200, 400, 500)[i % 3],
            stream=bool(i % 2),
            prompt_tokens=i,
            completion_tokens=2 * i,
            cached_tokens=i // 2,
            reasoning_tokens=i // 3,
            total_tokens=3 * i,
            cost_usd=None if i % 11 == 0 else Decimal(i) / Decimal(10**9),
            provider_cost_pico=None if i % 2 else i * 1000,
            latency_ms=i % 1000,
            estimated=i % 4 == 0,
            end_user=None if i % 3 else f"end-{i}",
            upstream=None if i % 8 == 0 else "openai",
            error_code=None if i % 9 else "upstream_timeout",
        )
        for i in range(count)
    ]


def stored(row) -> tuple:
    """A usage_events row as comparable values (SQLite gives text times and int flags)."""
    ts = row.ts if isinstance(row.ts, datetime) else datetime.fromisoformat(str(row.ts))
    return (
        row.request_id, ts.replace(tzinfo=None), str(row.day), row.user_name, row.key_id,
        row.key_display, row.model, row.requested_model, row.endpoint, row.method, row.status,
        bool(row.stream), row.prompt_tokens, row.completion_tokens, row.cached_tokens,
        row.reasoning_tokens, row.total_tokens, row.cost_pico, row.provider_cost_pico,
        row.latency_ms, bool(row.estimated), row.source, row.end_user, row.upstream,
        row.error_code,
    )  # fmt: skip


def given(event) -> tuple:
    ts = event.timestamp.astimezone(UTC).replace(tzinfo=None)
    return (
        event.request_id, ts, ts.date().isoformat(), event.user, event.key_id,
        event.key_display, event.model, event.requested_model, event.endpoint, event.method,
        event.status, event.stream, event.prompt_tokens, event.completion_tokens,
        event.cached_tokens, event.reasoning_tokens, event.total_tokens, event.cost_pico,
        event.provider_cost_pico, event.latency_ms, event.estimated, event.source,
        event.end_user, event.upstream, event.error_code,
    )  # fmt: skip


async def test_every_row_of_a_large_batch_is_stored_as_given(backend, engine, make_event):
    """1,234 rows: on SQLite, two full VALUES statements and a shorter one; one executemany
    elsewhere. Every column of every row reads back as it was given."""
    events = varied_events(make_event, 1234)
    inserted = await write_events(engine, events, known_new=True)
    assert len(inserted) == 1234
    async with engine.connect() as conn:
        rows = (await conn.execute(select(TABLE).order_by(TABLE.c.request_id))).all()
    assert [stored(row) for row in rows] == sorted(given(event) for event in events)


async def test_sqlite_inserts_a_hundred_rows_per_statement_step_in_one_statement_text(
    tmp_path, make_event
):
    """The driver lets go of the GIL per statement step: an executemany of N single rows
    takes it back N times, each wait up to 5 ms while the event loop is busy. And SQLite keeps
    every distinct statement text prepared: the chunks are padded to one length, so two
    batches of other sizes use the same text (see ledger/bulk.py)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        await upgrade(engine)
        inserts: list[tuple[str, int, int]] = []  # (text, rows in it, executions)

        def seen(conn, cursor, statement, parameters, context, executemany) -> None:
            if statement.startswith("INSERT INTO usage_events "):
                runs = len(parameters) if executemany else 1
                inserts.append((statement, statement.count("(?"), runs))

        sqlalchemy_event.listen(engine.sync_engine, "before_cursor_execute", seen)
        await write_events(engine, varied_events(make_event, 1234), known_new=True)
        await write_events(engine, varied_events(make_event, 7), known_new=True)
        async with engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(TABLE))
    finally:
        await engine.dispose()
    assert [(rows, runs) for _, rows, runs in inserts] == [(100, 13), (100, 1)]
    assert inserts[0][0] == inserts[1][0]
    assert count == 1234 + 7  # the padding rows were not inserted
