"""The coarse rollup usage_daily_user: the writer, the migration's backfill and the reports.

usage_daily_user must always be usage_daily summed over its key (day, user, model, source),
and every report it serves must equal the same report computed from usage_daily.
"""

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger import reports, spend
from spendgate.ledger.engine import alembic_config, create_engine, upgrade
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.reports import GROUP_FIELDS, UsageFilter, monitor, rollup_for, usage_report
from spendgate.ledger.schema import (
    ROLLUP_KEY,
    ROLLUP_SUMS,
    USER_ROLLUP_KEY,
    UsageDaily,
    UsageDailyUser,
)
from spendgate.ledger.spend import spent_before
from spendgate.ledger.store import Store
from spendgate.ledger.writer import LedgerWriter, write_events
from spendgate.money import usd_to_pico
from tests.ledger.conftest import EventFactory

DAILY: Table = UsageDaily.__table__  # type: ignore[assignment]
DAILY_USER: Table = UsageDailyUser.__table__  # type: ignore[assignment]
START = datetime(2025, 3, 1, 22, 0, tzinfo=UTC)
ALL_TIME = UsageFilter(start=date(2000, 1, 1), end=date(2100, 1, 1))
COARSE_GROUPS = (None, "user", "model", "day", "source")

Rollup = dict[tuple[Any, ...], tuple[int, ...]]


def mixed_events(make_event: EventFactory, key_ids: list[int], count: int) -> list[UsageEvent]:
    """Several users, keys, end users, upstreams, sources and days; unpriced and estimated."""
    return [
        make_event(
            timestamp=START + timedelta(minutes=41 * i),
            user=("alice", "bob", "carol")[i % 3],
            key_id=None if i % 7 == 0 else key_ids[i % len(key_ids)],
            model=("gpt-4o", "gpt-4o-mini", "o3", "text-embedding-3-small")[i % 4],
            source="ingest" if i % 7 == 0 else "proxy",
            end_user=(None, "eu-1", "eu-2", "eu-3", "")[i % 5],
            upstream=(None, "openai", "azure-east")[i % 3 if i % 2 else 1],
            prompt_tokens=100 + i,
            completion_tokens=3 * i,
            cached_tokens=i % 40,
            reasoning_tokens=i % 11,
            total_tokens=100 + 4 * i,
            cost_usd=None if i % 9 == 0 else Decimal("0.000000123457") * (i + 1),
            estimated=i % 6 == 0,
        )
        for i in range(count)
    ]


async def read_rollup(engine: AsyncEngine, table: Table, key: tuple[str, ...]) -> Rollup:
    """Rows of a rollup table: key tuple -> sums (ints, days as ISO strings)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(table))).mappings().all()
    return {
        tuple(str(row[name]) if name == "day" else row[name] for name in key): tuple(
            int(row[name]) for name in ROLLUP_SUMS
        )
        for row in rows
    }


def summed_by_user_key(fine: Rollup) -> Rollup:
    """usage_daily rows summed by USER_ROLLUP_KEY, as usage_daily_user must hold them."""
    at = [ROLLUP_KEY.index(name) for name in USER_ROLLUP_KEY]
    sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(ROLLUP_SUMS))
    for key, values in fine.items():
        total = sums[tuple(key[index] for index in at)]
        for index, value in enumerate(values):
            total[index] += value
    return {key: tuple(values) for key, values in sums.items()}


async def assert_coarse_is_fine_summed(engine: AsyncEngine) -> Rollup:
    fine = await read_rollup(engine, DAILY, ROLLUP_KEY)
    coarse = await read_rollup(engine, DAILY_USER, USER_ROLLUP_KEY)
    assert coarse == summed_by_user_key(fine)
    assert len(coarse) < len(fine)
    return coarse


async def make_keys(engine: AsyncEngine) -> list[int]:
    store = Store(engine)
    return [(await store.create_key(f"owner{n}", f"{n:064d}", f"sg-{n}…")).id for n in range(4)]


async def test_the_writer_keeps_the_coarse_rollup_equal_to_the_fine_one_summed(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    events = mixed_events(make_event, await make_keys(engine), 400)
    writer = LedgerWriter(engine, max_batch=37)
    writer.start()
    for event in events[:300]:
        writer.record(event)
    await writer.stop()
    # Duplicates (already written, and twice in one batch) are skipped in both rollups.
    assert await write_events(engine, [*events[250:400], *events[390:400]]) == events[300:400]
    assert await write_events(engine, events[::3]) == []
    coarse = await assert_coarse_is_fine_summed(engine)
    requests, cost, unpriced, estimated = (
        ROLLUP_SUMS.index(name)
        for name in ("requests", "cost_pico", "unpriced_requests", "estimated_requests")
    )
    assert sum(values[requests] for values in coarse.values()) == len(events)
    assert sum(values[unpriced] for values in coarse.values()) == sum(
        e.cost_usd is None for e in events
    )
    assert sum(values[estimated] for values in coarse.values()) == sum(e.estimated for e in events)
    assert sum(values[cost] for values in coarse.values()) == sum(
        usd_to_pico(e.cost_usd) for e in events if e.cost_usd is not None
    )


def _upgrade_to(connection: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


async def test_the_migration_backfills_the_coarse_rollup(
    backend: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0002")
            # A ledger written before 0003: usage_daily rows only (several per coarse key).
            rows = [
                {
                    "day": date(2025, 3, 1) + timedelta(days=i % 4),
                    "user_name": ("alice", "bob")[i % 2],
                    "key_id": i // 2 % 3,
                    "model": ("gpt-4o", "o3", "gpt-4o-mini")[i % 3],
                    "source": ("proxy", "ingest")[i % 5 == 0],
                    "end_user": ("", "eu-1", "eu-2")[i // 3 % 3],
                    "upstream": ("", "openai")[i // 5 % 2],
                }
                | {name: (i + 1) * (n + 1) * 10**12 + i for n, name in enumerate(ROLLUP_SUMS)}
                for i in range(120)
            ]
            unique = {tuple(row[name] for name in ROLLUP_KEY): row for row in rows}
            await conn.execute(insert(DAILY), list(unique.values()))
        with monkeypatch.context() as patch:  # at 0002 every report reads usage_daily
            patch.setattr(reports, "rollup_for", lambda flt, group_by=None: reports._DAILY)
            before = {group: await usage_report(engine, ALL_TIME, group) for group in GROUP_FIELDS}
        await upgrade(engine)
        await assert_coarse_is_fine_summed(engine)
        async with engine.connect() as conn:
            largest = await conn.scalar(select(func.max(DAILY_USER.c.cost_pico)))
        assert int(largest or 0) > 10**12  # sums above 32 bits survive the backfill exactly
        for group in GROUP_FIELDS:
            assert await usage_report(engine, ALL_TIME, group) == before[group], group
    finally:
        await engine.dispose()


def test_the_coarse_rollup_is_chosen_only_when_it_has_every_field() -> None:
    fine, coarse = reports._DAILY, reports._DAILY_USER
    for group in GROUP_FIELDS:
        expected = coarse if group in ("user", "model", "day", "source") else fine
        assert rollup_for(ALL_TIME, group) is expected, group
    assert rollup_for(ALL_TIME) is coarse
    narrow = UsageFilter(ALL_TIME.start, ALL_TIME.end, user="a", model="m", source="proxy")
    assert rollup_for(narrow, "day") is coarse
    for narrowed in (
        UsageFilter(ALL_TIME.start, ALL_TIME.end, key_id=3),
        UsageFilter(ALL_TIME.start, ALL_TIME.end, end_user="eu"),
        UsageFilter(ALL_TIME.start, ALL_TIME.end, upstream="openai"),
    ):
        assert rollup_for(narrowed, "user") is fine
    # An empty filter (`?end_user=`) filters nothing: the coarse rollup still answers.
    assert rollup_for(UsageFilter(ALL_TIME.start, ALL_TIME.end, end_user=""), "user") is coarse


@pytest.fixture
async def mixed_ledger(engine: AsyncEngine, make_event: EventFactory) -> list[UsageEvent]:
    events = mixed_events(make_event, await make_keys(engine), 300)
    await write_events(engine, events)
    return events


async def test_reports_from_the_coarse_rollup_equal_those_from_the_fine_one(
    backend: str,
    engine: AsyncEngine,
    mixed_ledger: list[UsageEvent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    filters = [
        ALL_TIME,
        UsageFilter(start=date(2025, 3, 3), end=date(2025, 3, 6)),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, user="bob"),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, model="o3", source="proxy"),
        UsageFilter(start=date(2025, 3, 5), end=date(2025, 3, 30), user="alice", model="gpt-4o"),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, source="ingest"),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, user="nobody"),
    ]
    coarse = {
        (flt, group): await usage_report(engine, flt, group)
        for flt in filters
        for group in COARSE_GROUPS
    }
    today = date(2025, 3, 5)
    coarse_monitor = await monitor(engine, today)
    coarse_spend = [
        await spent_before(engine, user=user, since=since, before=before)
        for user in ("alice", "bob", "nobody")
        for since in (None, date(2025, 3, 3))
        for before in (None, datetime(2025, 3, 4, 9, 30, tzinfo=UTC))
    ]
    # The same reports, every one forced onto usage_daily.
    monkeypatch.setattr(reports, "rollup_for", lambda flt, group_by=None: reports._DAILY)
    monkeypatch.setattr(reports, "_DAILY_USER", reports._DAILY)
    monkeypatch.setattr(reports, "UsageDailyUser", UsageDaily)
    monkeypatch.setattr(spend, "_DAILY_USER", spend._DAILY)
    for (flt, group), report in coarse.items():
        assert report["totals"]["requests"] > 0 or flt.user == "nobody"
        assert await usage_report(engine, flt, group) == report, (flt, group)
    assert await monitor(engine, today) == coarse_monitor
    assert coarse_monitor["top_users"] and coarse_monitor["today"]["requests"] > 0
    fine_spend = [
        await spent_before(engine, user=user, since=since, before=before)
        for user in ("alice", "bob", "nobody")
        for since in (None, date(2025, 3, 3))
        for before in (None, datetime(2025, 3, 4, 9, 30, tzinfo=UTC))
    ]
    assert fine_spend == coarse_spend
    assert any(coarse_spend)


async def test_a_purge_keeps_both_rollups(
    backend: str, engine: AsyncEngine, mixed_ledger: list[UsageEvent]
) -> None:
    fine = await read_rollup(engine, DAILY, ROLLUP_KEY)
    coarse = await read_rollup(engine, DAILY_USER, USER_ROLLUP_KEY)
    assert await reports.purge_before(engine, date(2025, 3, 5)) > 0
    assert await read_rollup(engine, DAILY, ROLLUP_KEY) == fine
    assert await read_rollup(engine, DAILY_USER, USER_ROLLUP_KEY) == coarse
