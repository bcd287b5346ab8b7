"""The batched ledger writer: batching, flush/stop, duplicates, rollups and retries."""

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.events import UsageEvent
from spendgate.ledger.schema import ROLLUP_SUMS, UsageDaily, UsageEventRow
from spendgate.ledger.store import Store
from spendgate.ledger.writer import LedgerWriter, write_events
from spendgate.money import usd_to_pico

EventFactory = Callable[..., UsageEvent]


@contextmanager
def counting_commits(engine: AsyncEngine) -> Iterator[list[int]]:
    """Count the transactions committed on `engine` inside the block."""
    commits = [0]

    def on_commit(_conn: Any) -> None:
        commits[0] += 1

    event.listen(engine.sync_engine, "commit", on_commit)
    try:
        yield commits
    finally:
        event.remove(engine.sync_engine, "commit", on_commit)


async def ledger_counts(engine: AsyncEngine) -> dict[str, int]:
    """Event rows and the rollups' sums."""
    sums = [func.coalesce(func.sum(getattr(UsageDaily, name)), 0) for name in ROLLUP_SUMS]
    async with engine.connect() as conn:
        events = await conn.scalar(select(func.count()).select_from(UsageEventRow))
        totals = (await conn.execute(select(*sums))).one()
    return {"events": int(events or 0)} | {
        name: int(value) for name, value in zip(ROLLUP_SUMS, totals, strict=True)
    }


def expected_counts(events: Sequence[UsageEvent]) -> dict[str, int]:
    return {
        "events": len(events),
        "requests": len(events),
        "prompt_tokens": sum(e.prompt_tokens for e in events),
        "completion_tokens": sum(e.completion_tokens for e in events),
        "cached_tokens": sum(e.cached_tokens for e in events),
        "reasoning_tokens": sum(e.reasoning_tokens for e in events),
        "total_tokens": sum(e.total_tokens for e in events),
        "cost_pico": sum(usd_to_pico(e.cost_usd) for e in events if e.cost_usd is not None),
        "unpriced_requests": sum(e.cost_usd is None for e in events),
        "estimated_requests": sum(e.estimated for e in events),
    }


async def test_thousand_events_are_written_in_one_transaction(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    events = [make_event(prompt_tokens=i, total_tokens=i + 5) for i in range(1000)]
    writer = LedgerWriter(engine, flush_interval=5.0)
    writer.start()
    with counting_commits(engine) as commits:
        for item in events:
            writer.record(item)
        assert writer.queue_depth == 1000
        await writer.flush()
    await writer.stop()
    assert commits[0] == 1
    assert writer.written == 1000
    assert writer.queue_depth == 0
    assert writer.retries == 0 and writer.last_error is None
    assert writer.last_flush_seconds > 0
    assert await ledger_counts(engine) == expected_counts(events)


async def test_batches_are_capped_at_max_batch(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    events = [make_event() for _ in range(1000)]
    writer = LedgerWriter(engine, flush_interval=5.0, max_batch=300)
    writer.start()
    with counting_commits(engine) as commits:
        for item in events:
            writer.record(item)
        await writer.flush()
    await writer.stop()
    assert commits[0] == 4  # 300 + 300 + 300 + 100
    assert await ledger_counts(engine) == expected_counts(events)


async def test_events_trickling_in_are_gathered_for_the_flush_interval(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    writer = LedgerWriter(engine, flush_interval=0.3)
    writer.start()
    with counting_commits(engine) as commits:
        for _ in range(5):
            writer.record(make_event())
            await asyncio.sleep(0.02)
        while writer.written < 5:
            await asyncio.sleep(0.02)
    await writer.stop()
    assert commits[0] == 1


async def test_flush_returns_once_earlier_events_are_committed(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    writer = LedgerWriter(engine, flush_interval=10.0)
    writer.start()
    await writer.flush()  # nothing recorded: returns at once
    events = [make_event() for _ in range(3)]
    for item in events:
        writer.record(item)
    started = time.monotonic()
    await writer.flush()
    assert time.monotonic() - started < 5  # flush does not wait out the interval
    assert (await ledger_counts(engine))["events"] == 3
    await writer.stop()


async def test_duplicates_in_one_batch_count_once(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    first = make_event(request_id="dup-1")
    writer = LedgerWriter(engine)
    writer.start()
    writer.record(first)
    writer.record(make_event(request_id="dup-1", prompt_tokens=999))
    writer.record(make_event(request_id="other"))
    await writer.stop()
    assert writer.written == 2
    counts = await ledger_counts(engine)
    assert counts["events"] == 2 and counts["requests"] == 2
    assert counts["prompt_tokens"] == 20


async def test_duplicates_across_batches_count_once(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    events = [make_event() for _ in range(20)]
    written: list[UsageEvent] = []
    writer = LedgerWriter(engine, on_written=written.extend)
    writer.start()
    for item in events:
        writer.record(item)
    await writer.flush()
    for item in [*events[:10], make_event(request_id="new")]:
        writer.record(item)  # a retried delivery of events already in the ledger
    await writer.stop()
    assert writer.written == 21
    assert [item.request_id for item in written] == [
        *(item.request_id for item in events),
        "new",
    ]
    assert (await ledger_counts(engine))["requests"] == 21


async def test_a_write_repeated_after_commit_changes_nothing(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    events = [make_event(cost_usd=None), make_event(estimated=True), make_event()]
    assert await write_events(engine, events) == events
    before = await ledger_counts(engine)
    assert await write_events(engine, events) == []
    assert await ledger_counts(engine) == before == expected_counts(events)


async def test_rollups_equal_the_raw_events(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    day = datetime(2025, 3, 1, 23, 59, 59, 999999, tzinfo=UTC)
    events = [
        make_event(
            timestamp=day + timedelta(hours=i % 3),
            user=("alice", "bob")[i % 2],
            key_id=(None, 1, 2)[i % 3],
            model=("gpt-4o", "gpt-4o-mini", "o3")[i % 3],
            source=("proxy", "ingest")[i % 2],
            end_user=(None, "u1", "u2", "")[i % 4],
            upstream=(None, "openai", "azure")[i % 3],
            prompt_tokens=100 + i,
            completion_tokens=7 * i,
            cached_tokens=i % 50,
            reasoning_tokens=i % 11,
            total_tokens=100 + 8 * i,
            cost_usd=None if i % 7 == 0 else Decimal(i) / Decimal(10**12) + Decimal("0.0003"),
            estimated=i % 5 == 0,
        )
        for i in range(500)
    ]
    writer = LedgerWriter(engine, max_batch=64)
    writer.start()
    for item in events:
        writer.record(item)
    await writer.stop()
    counts = await ledger_counts(engine)
    assert counts == expected_counts(events)
    async with engine.connect() as conn:
        raw = (
            await conn.execute(
                text(
                    "SELECT COUNT(*), SUM(prompt_tokens), SUM(cached_tokens), SUM(cost_pico),"
                    " SUM(CASE WHEN cost_pico IS NULL THEN 1 ELSE 0 END) FROM usage_events"
                )
            )
        ).one()
    assert [int(value) for value in raw] == [
        counts[name]
        for name in ("requests", "prompt_tokens", "cached_tokens", "cost_pico", "unpriced_requests")
    ]


async def test_last_used_at_moves_only_forward(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    store = Store(engine)
    key = await store.create_key("trent", "0" * 64, "sg-t")
    late = datetime(2025, 5, 5, 10, 0, 0, 250000, tzinfo=UTC)
    generation = await store.read_generation()
    await write_events(
        engine,
        [
            make_event(key_id=key.id, timestamp=late - timedelta(minutes=5)),
            make_event(key_id=key.id, timestamp=late),
        ],
    )
    await write_events(engine, [make_event(key_id=key.id, timestamp=late - timedelta(days=1))])
    stored = await store.get_key(key.id)
    assert stored is not None and stored.last_used_at == late
    assert await store.read_generation() == generation  # usage is not a principal change
    async with engine.connect() as conn:
        displays = set((await conn.execute(select(UsageEventRow.key_display))).scalars())
    assert displays == {"sg-t"}


async def test_oversized_fields_are_cut_to_fit_not_retried_forever(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    long_id = "r" * 100
    await write_events(
        engine,
        [make_event(request_id=long_id, model="m" * 500, end_user="x\x00y", endpoint="e" * 300)],
    )
    assert await write_events(engine, [make_event(request_id=long_id)]) == []
    async with engine.connect() as conn:
        row = (await conn.execute(select(UsageEventRow))).one()
    assert len(row.request_id) == 64
    assert row.model == "m" * 128
    assert row.end_user == "xy"
    assert row.endpoint == "e" * 128


async def test_writer_survives_a_database_error_and_retries(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(UsageDaily.__table__.drop)
    events = [make_event() for _ in range(50)]
    writer = LedgerWriter(engine, flush_interval=0.01)
    writer.start()
    for item in events:
        writer.record(item)
    deadline = time.monotonic() + 30
    while writer.retries < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert writer.retries >= 2
    assert writer.last_error is not None and "usage_daily" in writer.last_error
    assert writer.written == 0
    assert writer.queue_depth == 50  # the batch being retried is still pending
    async with engine.begin() as conn:
        await conn.run_sync(UsageDaily.__table__.create)
    await asyncio.wait_for(writer.flush(), timeout=30)
    await writer.stop()
    assert writer.last_error is None
    assert writer.written == 50
    assert await ledger_counts(engine) == expected_counts(events)


async def test_stop_drains_without_waiting_for_the_interval(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    events = [make_event() for _ in range(2500)]
    writer = LedgerWriter(engine, flush_interval=30.0)
    writer.start()
    for item in events:
        writer.record(item)
    started = time.monotonic()
    await writer.stop()
    assert time.monotonic() - started < 20
    assert writer.queue_depth == 0 and writer.written == 2500
    assert await ledger_counts(engine) == expected_counts(events)
    writer.record(make_event())  # after stop: refused and counted, never silently queued
    assert writer.dropped == 1


async def test_a_full_queue_drops_and_counts(engine: AsyncEngine, make_event: EventFactory) -> None:
    writer = LedgerWriter(engine, max_queue=5)
    for _ in range(8):
        writer.record(make_event())
    assert (writer.queue_depth, writer.dropped) == (5, 3)
    writer.start()
    await writer.flush()
    await writer.stop()
    assert writer.written == 5


async def test_a_failing_listener_does_not_stop_the_writer(
    engine: AsyncEngine, make_event: EventFactory
) -> None:
    def explode(_events: Sequence[UsageEvent]) -> None:
        raise RuntimeError("listener bug")

    writer = LedgerWriter(engine, on_written=explode)
    writer.start()
    writer.record(make_event())
    await writer.flush()
    writer.record(make_event())
    await writer.stop()
    assert writer.written == 2


async def test_proxy_batches_skip_the_lookup_and_a_clash_still_counts_once(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    events = [make_event() for _ in range(5)]
    writer = LedgerWriter(engine)
    writer.start()
    with counting_commits(engine) as commits:
        for item in events:
            writer.record(item)
        await writer.flush()
    assert commits[0] == 1 and writer.retries == 0  # fresh proxy ids: one clean commit
    writer.record(events[0])  # impossible for a live proxy, but the ledger must hold
    writer.record(make_event())
    await writer.stop()
    assert writer.retries == 1  # the INSERT hit the unique index; the retry looked
    assert writer.written == 6
    assert await ledger_counts(engine) == expected_counts([*events, make_event()])
