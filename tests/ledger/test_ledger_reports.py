"""Reports read from the rollups and the CSV/monitor listings, against Python-side sums."""

import csv
import io
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.events import UsageEvent
from spendgate.ledger.reports import (
    CSV_COLUMNS,
    GROUP_FIELDS,
    UsageFilter,
    iter_usage_csv,
    key_totals,
    monitor,
    purge_before,
    usage_report,
)
from spendgate.ledger.schema import UsageEventRow
from spendgate.ledger.store import Store
from spendgate.ledger.writer import write_events
from spendgate.money import pico_to_usd

EventFactory = Callable[..., UsageEvent]
TODAY = date(2025, 3, 14)
ALL_TIME = UsageFilter(start=date(2000, 1, 1), end=date(2100, 1, 1))


@dataclass
class Ledger:
    """Events written to the ledger and the key ids/displays they used."""

    events: list[UsageEvent]
    displays: dict[int, str]


@pytest.fixture
async def ledger(engine: AsyncEngine, make_event: EventFactory) -> Ledger:
    store = Store(engine)
    keys = [await store.create_key(f"user{n}", f"{n:064d}", f"sg-{n}…") for n in range(3)]
    events = []
    for i in range(240):
        key = keys[i % 3]
        events.append(
            make_event(
                timestamp=datetime(2025, 3, 14, 18, 0, tzinfo=UTC) - timedelta(hours=7 * i),
                user=key.user if i % 8 else "ingest-only",
                key_id=key.id if i % 8 else None,
                model=("gpt-4o", "gpt-4o-mini", "o3", "text-embedding-3-small")[i % 4],
                source="ingest" if i % 8 == 0 else "proxy",
                end_user=(None, "enduser-a", "enduser-b")[i % 3 if i % 5 else 0],
                upstream=(None, "openai", "azure-east")[i % 3 if i % 2 else 1],
                prompt_tokens=1000 + i,
                completion_tokens=3 * i,
                cached_tokens=i % 100,
                reasoning_tokens=i % 13,
                total_tokens=1000 + 4 * i,
                cost_usd=None if i % 9 == 0 else Decimal("0.000123456789") * (i + 1),
                provider_cost_pico=i * 1_000_003 if i % 3 == 1 else None,
                estimated=i % 10 == 0,
                stream=i % 2 == 0,
            )
        )
    await write_events(engine, events)
    return Ledger(events, {key.id: key.display for key in keys})


def totals(events: Sequence[UsageEvent]) -> dict[str, Any]:
    return {
        "requests": len(events),
        "prompt_tokens": sum(e.prompt_tokens for e in events),
        "completion_tokens": sum(e.completion_tokens for e in events),
        "cached_tokens": sum(e.cached_tokens for e in events),
        "reasoning_tokens": sum(e.reasoning_tokens for e in events),
        "total_tokens": sum(e.total_tokens for e in events),
        "cost_usd": sum((e.cost_usd for e in events if e.cost_usd is not None), Decimal(0)),
    }


def day_of(event: UsageEvent) -> date:
    return event.timestamp.astimezone(UTC).date()


def matches(event: UsageEvent, flt: UsageFilter) -> bool:
    wanted = {
        "user": flt.user,
        "key_id": flt.key_id,
        "model": flt.model,
        "source": flt.source,
        "end_user": flt.end_user,
        "upstream": flt.upstream,
    }
    return flt.start <= day_of(event) <= flt.end and all(
        value is None or getattr(event, name) == value for name, value in wanted.items()
    )


def group_value(event: UsageEvent, field: str) -> Any:
    if field == "key":
        return event.key_id
    if field == "day":
        return day_of(event).isoformat()
    return getattr(event, "user" if field == "user" else field) or None


async def test_totals_equal_the_events_exactly(
    backend: str, engine: AsyncEngine, ledger: Ledger
) -> None:
    report = await usage_report(engine, ALL_TIME, None)
    assert report["start"] == "2000-01-01" and report["end"] == "2100-01-01"
    assert report["totals"] == totals(ledger.events)
    assert isinstance(report["totals"]["cost_usd"], Decimal)
    assert report["groups"] == []


async def test_group_by_every_field(backend: str, engine: AsyncEngine, ledger: Ledger) -> None:
    flt = UsageFilter(start=date(2025, 3, 1), end=TODAY)
    chosen = [event for event in ledger.events if matches(event, flt)]
    for field in GROUP_FIELDS:
        report = await usage_report(engine, flt, field)
        assert report["totals"] == totals(chosen)
        by_value: dict[Any, list[UsageEvent]] = defaultdict(list)
        for event in chosen:
            by_value[group_value(event, field)].append(event)
        groups = report["groups"]
        got = {(g["key_id"] if field == "key" else g[field]): g for g in groups}
        assert set(got) == set(by_value), field
        for value, events in by_value.items():
            expected = totals(events)
            assert {name: got[value][name] for name in expected} == expected, (field, value)
        if field == "key":
            assert {g["key"] for g in groups} == {*ledger.displays.values(), None}
        if field == "day":
            assert [g["day"] for g in groups] == sorted(g["day"] for g in groups)
        else:
            order = [(g["cost_usd"], g["requests"]) for g in groups]
            assert order == sorted(order, reverse=True), field


async def test_filters_narrow_the_report(backend: str, engine: AsyncEngine, ledger: Ledger) -> None:
    some_key = next(iter(ledger.displays))
    for flt in [
        UsageFilter(start=date(2025, 3, 10), end=date(2025, 3, 12)),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, user="user1"),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, key_id=some_key),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, model="o3"),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, source="ingest"),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, end_user="enduser-b"),
        UsageFilter(start=ALL_TIME.start, end=ALL_TIME.end, upstream="azure-east"),
        UsageFilter(start=date(2025, 3, 1), end=TODAY, user="user2", model="gpt-4o-mini"),
    ]:
        expected = totals([event for event in ledger.events if matches(event, flt)])
        assert 0 < expected["requests"] < len(ledger.events), flt
        assert (await usage_report(engine, flt, "model"))["totals"] == expected, flt


async def test_unknown_group_is_refused(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="cannot group by 'colour'"):
        await usage_report(engine, ALL_TIME, "colour")


async def test_key_totals(backend: str, engine: AsyncEngine, ledger: Ledger) -> None:
    for key_id in ledger.displays:
        expected = totals([event for event in ledger.events if event.key_id == key_id])
        assert await key_totals(engine, key_id) == expected
    assert (await key_totals(engine, 10_000))["requests"] == 0


async def read_csv(engine: AsyncEngine, flt: UsageFilter) -> tuple[list[str], list[str]]:
    chunks = [chunk async for chunk in iter_usage_csv(engine, flt)]
    return chunks, list(csv.reader(io.StringIO("".join(chunks))))


async def test_csv_has_the_header_and_one_row_per_event(
    backend: str, engine: AsyncEngine, ledger: Ledger
) -> None:
    flt = UsageFilter(start=date(2025, 3, 1), end=TODAY, model="gpt-4o")
    chunks, rows = await read_csv(engine, flt)
    assert chunks[0] == ",".join(CSV_COLUMNS) + "\r\n"
    assert rows[0] == list(CSV_COLUMNS)
    expected = sorted(
        (event for event in ledger.events if matches(event, flt)), key=lambda e: e.timestamp
    )
    records = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [r["request_id"] for r in records] == [e.request_id for e in expected]
    for record, event in zip(records, expected, strict=True):
        assert datetime.fromisoformat(record["timestamp"]) == event.timestamp
        assert record["timestamp"].endswith(("Z", "+00:00"))
        assert record["user"] == event.user
        assert record["key"] == ("" if event.key_id is None else ledger.displays[event.key_id])
        if event.cost_usd is not None:
            assert Decimal(record["cost_usd"]) == event.cost_usd
            assert "E" not in record["cost_usd"].upper()
        else:
            assert record["cost_usd"] == ""
        assert record["stream"] == ("true" if event.stream else "false")
        assert record["estimated"] == ("true" if event.estimated else "false")
        assert int(record["total_tokens"]) == event.total_tokens
        assert record["end_user"] == (event.end_user or "")
        assert record["upstream"] == (event.upstream or "")
        assert record["source"] == event.source
        if event.provider_cost_pico is None:
            assert record["provider_cost_usd"] == ""
        else:
            assert Decimal(record["provider_cost_usd"]) == pico_to_usd(event.provider_cost_pico)
            assert "E" not in record["provider_cost_usd"].upper()


async def test_csv_pages_through_ties_in_time_order(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    same = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
    events = [
        make_event(timestamp=same + timedelta(seconds=i // 700), request_id=f"r{i:05d}")
        for i in range(2100)
    ]
    await write_events(engine, events)
    chunks, rows = await read_csv(engine, UsageFilter(start=date(2025, 4, 1), end=date(2025, 4, 1)))
    assert len(chunks) > 3  # header, then one chunk per page
    assert [row[1] for row in rows[1:]] == [event.request_id for event in events]


async def test_csv_of_nothing_is_just_the_header(backend: str, engine: AsyncEngine) -> None:
    _, rows = await read_csv(engine, ALL_TIME)
    assert rows == [list(CSV_COLUMNS)]


async def test_monitor(backend: str, engine: AsyncEngine, ledger: Ledger) -> None:
    view = await monitor(engine, TODAY, top=2, recent=5)
    today = [event for event in ledger.events if day_of(event) == TODAY]
    assert view["today"] == totals(today)
    assert view["active_users_today"] == len({event.user for event in today})
    month = [e for e in ledger.events if TODAY.replace(day=1) <= day_of(e) <= TODAY]
    per_user: dict[str, list[UsageEvent]] = defaultdict(list)
    for event in month:
        per_user[event.user].append(event)
    ranked = sorted(
        ((totals(events)["cost_usd"], len(events), user) for user, events in per_user.items()),
        key=lambda item: (-item[0], -item[1], item[2]),
    )[:2]
    assert [(u["cost_usd"], u["requests"], u["user"]) for u in view["top_users"]] == ranked
    latest = sorted(ledger.events, key=lambda e: e.timestamp, reverse=True)[:5]
    assert [r["request_id"] for r in view["recent"]] == [e.request_id for e in latest]
    assert set(view["recent"][0]) == set(CSV_COLUMNS)


async def test_purge_deletes_old_events_and_keeps_rollups(
    backend: str, engine: AsyncEngine, ledger: Ledger
) -> None:
    before = await usage_report(engine, ALL_TIME, "day")
    cutoff = date(2025, 3, 10)
    old = [event for event in ledger.events if day_of(event) < cutoff]
    assert await purge_before(engine, cutoff) == len(old) > 0
    assert await purge_before(engine, cutoff) == 0
    async with engine.connect() as conn:
        left = await conn.scalar(select(func.count()).select_from(UsageEventRow))
    assert left == len(ledger.events) - len(old)
    assert await usage_report(engine, ALL_TIME, "day") == before
    _, rows = await read_csv(engine, ALL_TIME)
    assert len(rows) - 1 == len(ledger.events) - len(old)
