"""The one background task that writes usage events to the ledger in batches.

The hot path only appends to an in-memory queue (`LedgerWriter.record`). The task takes
up to `max_batch` events at a time, once the oldest has waited `flush_interval` (counted
from its arrival: events that came while the last batch was being written have waited that
long already), and writes each batch in one transaction: the new events, their daily
rollups (usage_daily and the coarse usage_daily_user) and the keys' `last_used_at`. A
failed batch is kept and retried with backoff. Events whose request id is already in the
ledger are skipped, so a retry after a commit whose answer was lost never counts anything
twice.
"""

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Dialect, String, Table, bindparam, or_, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from spendgate.ledger.bulk import InsertCache, Processor
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.journal import Journal
from spendgate.ledger.schema import (
    ROLLUP_KEY,
    ROLLUP_SUMS,
    USER_ROLLUP_KEY,
    ApiKey,
    UsageDaily,
    UsageDailyUser,
    UsageEventRow,
    UTCDateTime,
)
from spendgate.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0
_SELECT_CHUNK = 500  # request ids per IN (...) lookup
_EVENTS = cast(Table, UsageEventRow.__table__)
_DAILY = cast(Table, UsageDaily.__table__)
_DAILY_USER = cast(Table, UsageDailyUser.__table__)
# Where each USER_ROLLUP_KEY field sits in a ROLLUP_KEY tuple.
_USER_KEY_AT = tuple(ROLLUP_KEY.index(name) for name in USER_ROLLUP_KEY)

_REQUEST_ID_LEN = 64

OnWritten = Callable[[Sequence[UsageEvent]], None]
OnFlushed = Callable[[float], None]


class LedgerWriter:
    """Queue of usage events and the task that writes them in batched transactions."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        flush_interval: float = 0.1,
        max_batch: int = 5000,
        max_queue: int = 100_000,
        on_written: OnWritten | None = None,
        on_flushed: OnFlushed | None = None,
        journal: Journal | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._engine = engine
        self._timeout = timeout
        self._statements = Statements()
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._on_written = on_written
        self._on_flushed = on_flushed
        self._journal = journal
        self._current: list[UsageEvent] = []  # the batch being written
        self._journaled = 0
        self._queue: deque[UsageEvent] = deque()
        # When the oldest queued event arrived (time.monotonic), or earlier: set as the
        # queue stops being empty; a batch capped at `max_batch` leaves its rest this old.
        self._oldest_at = 0.0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        # Events accepted by record() and events done (committed or skipped as duplicates);
        # flush() waits for `done` to reach the `accepted` it saw.
        self._accepted = 0
        self._done = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._written = 0
        self._dropped = 0
        self._retries = 0
        self._events_retried = 0
        self._last_error: str | None = None
        self._last_flush_seconds = 0.0

    @property
    def queue_depth(self) -> int:
        """Events recorded and not yet committed (including the batch being written)."""
        return self._accepted - self._done

    @property
    def written(self) -> int:
        """Events inserted into the ledger (duplicates skipped are not counted)."""
        return self._written

    @property
    def dropped(self) -> int:
        """Events refused because the queue was full or the writer was stopped."""
        return self._dropped

    @property
    def retries(self) -> int:
        """Failed batch writes that were retried."""
        return self._retries

    @property
    def journaled(self) -> int:
        """Events put in the journal (queue full, or unwritten at shutdown)."""
        return self._journaled

    @property
    def journal_pending(self) -> int:
        """Events in this process's journal file, waiting to be replayed."""
        return self._journal.pending if self._journal is not None else 0

    @property
    def events_retried(self) -> int:
        """Events in failed batch writes, counted once per failed attempt."""
        return self._events_retried

    @property
    def last_error(self) -> str | None:
        """The error of the last failed write, None once a write succeeds again."""
        return self._last_error

    @property
    def last_flush_seconds(self) -> float:
        """Duration of the last successful batch write."""
        return self._last_flush_seconds

    def start(self) -> None:
        """Start the writer task on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")
            self._task.add_done_callback(self._fail_waiters)

    def record(self, event: UsageEvent) -> None:
        """Queue one event for writing; never blocks (a full queue drops and counts it)."""
        queue = self._queue
        if self._closed or len(queue) >= self._max_queue:
            self._spill([event])
            return
        queue.append(event)
        self._accepted += 1
        if len(queue) == 1:
            self._oldest_at = time.monotonic()
            self._wakeup.set()
        elif len(queue) >= self._max_batch:
            self._wakeup.set()

    async def flush(self) -> None:
        """Return once every event recorded before this call is committed."""
        target = self._accepted
        if self._done >= target:
            return
        if self._task is None or self._task.done():
            raise RuntimeError("the ledger writer is not running")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._wakeup.set()
        await waiter

    async def stop(self, write_seconds: float | None = None) -> None:
        """Write everything queued, then end the task (cancelling stop() cancels the task).

        With a journal, what is not written within `write_seconds` (the database is down)
        goes to the journal instead, to be written at the next start.
        """
        self._stopping = True
        self._wakeup.set()
        if self._task is None and self._queue:
            self.start()
        task = self._task
        if task is not None:
            if self._journal is None or write_seconds is None:
                await task
            else:
                try:
                    async with asyncio.timeout(write_seconds):
                        await asyncio.shield(task)
                except TimeoutError:
                    await cancel_and_wait(task)
                    left = [*self._current, *self._queue]
                    self._queue.clear()
                    self._current = []
                    self._spill(left)
                    self._done = self._accepted
                    self._resolve_waiters()
        self._closed = True

    def _spill(self, events: list[UsageEvent]) -> None:
        """Put events in the journal, or count them dropped without one."""
        if self._journal is not None and events:
            try:
                self._journaled += self._journal.append(events)
                return
            except OSError as error:
                logger.error("cannot write the journal %s: %s", self._journal.path, error)
        self._dropped += len(events)

    async def _run(self) -> None:
        await self._replay_journal()
        while batch := await self._next_batch():
            self._current = batch
            inserted = await self._write_until_done(batch)
            self._current = []
            self._done += len(batch)
            self._written += len(inserted)
            self._resolve_waiters()
            self._tell(inserted)
            if self._journal is not None and self._journal.pending:
                await self._replay_journal()

    def _tell(self, inserted: list[UsageEvent]) -> None:
        if inserted and self._on_written is not None:
            try:
                self._on_written(inserted)
            except Exception:  # a listener's bug must not stop the ledger
                logger.exception("ledger on_written callback failed")

    async def _replay_journal(self) -> None:
        """Write the events of this process's journal and of processes that are gone."""
        if self._journal is None:
            return
        for path in self._journal.claim():
            replayed = 0
            for batch in Journal.batches(path, self._max_batch):
                inserted = await self._write_until_done(batch, known_new=False)
                self._written += len(inserted)
                replayed += len(batch)
                self._tell(inserted)
            Journal.done(path)
            logger.info("replayed %d journaled events from %s", replayed, path.name)

    async def _next_batch(self) -> list[UsageEvent]:
        """Wait for events, then gather until the interval or the batch size is reached."""
        queue = self._queue
        while not queue:
            if self._stopping:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        # Under load the events that came during the last write are due at once: waiting
        # the interval again after every write would cap the writer below the request rate.
        deadline = self._oldest_at + self._flush_interval
        while len(queue) < self._max_batch and not self._stopping and not self._waiters:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
        return [queue.popleft() for _ in range(min(len(queue), self._max_batch))]

    async def _write_until_done(
        self, batch: list[UsageEvent], *, known_new: bool | None = None
    ) -> list[UsageEvent]:
        delay = _FIRST_BACKOFF
        # This process's proxy events carry ids it made itself: on a first attempt none can
        # be in the ledger yet, so the look-up is skipped (a clash would fail the INSERT on
        # the unique index, and the retry looks).
        if known_new is None:
            known_new = all(event.source == "proxy" for event in batch)
        while True:
            started = time.perf_counter()
            try:
                # Bounded: a database that hangs without an error counts as a failed write.
                async with asyncio.timeout(self._timeout):
                    inserted = await write_events(
                        self._engine, batch, self._statements, known_new=known_new
                    )
            except Exception as error:  # the writer's outer edge: keep the batch, retry
                self._retries += 1
                self._events_retried += len(batch)
                log = logger.debug if self._last_error else logger.warning
                self._last_error = _describe(error)
                log("ledger write of %d events failed, retrying: %s", len(batch), self._last_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                known_new = False  # the failed attempt may have committed after all
                continue
            self._last_flush_seconds = time.perf_counter() - started
            if self._on_flushed is not None:
                self._on_flushed(self._last_flush_seconds)
            if self._last_error is not None:
                logger.info("ledger writes succeed again")
                self._last_error = None
            return inserted

    def _resolve_waiters(self) -> None:
        pending = []
        for target, waiter in self._waiters:
            if self._done >= target:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                pending.append((target, waiter))
        self._waiters = pending

    def _fail_waiters(self, _task: "asyncio.Task[None]") -> None:
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the ledger writer stopped"))
        self._waiters = []


class _Row(NamedTuple):
    """One usage_events row: its fields are the columns written, in INSERT order."""

    request_id: str
    ts: datetime
    day: date
    user_name: str
    key_id: int | None
    key_display: str | None
    model: str
    requested_model: str | None
    endpoint: str
    method: str
    status: int
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_pico: int | None
    provider_cost_pico: int | None
    latency_ms: int
    estimated: bool
    source: str
    end_user: str | None
    upstream: str | None
    error_code: str | None


_EVENT_COLUMNS = _Row._fields  # the usage_events columns the writer fills, in order
_STRING_LIMITS = tuple(
    (index, column.type.length)
    for index, column in enumerate(_EVENTS.c[name] for name in _EVENT_COLUMNS)
    if isinstance(column.type, String) and column.type.length and column.name != "request_id"
)


class Statements:
    """The writer's statements, built once per dialect and reused (a writer keeps one).

    Building an upsert costs ~0.9 ms of the event loop's time; the events INSERT is also
    compiled to plain SQL fed with tuples (see `bulk`).
    """

    def __init__(self) -> None:
        self.events = InsertCache(_EVENTS, _EVENT_COLUMNS, driver_conversions)
        self._upserts: dict[tuple[str, str], Insert] = {}

    def rollup_upsert(self, table: Table, key_names: Sequence[str], dialect: str) -> Insert:
        """INSERT a rollup row into `table`, or add its sums to the row with the same key."""
        cache_key = (table.name, dialect)
        stmt = self._upserts.get(cache_key)
        if stmt is None:
            stmt = self._upserts[cache_key] = _upsert(table, key_names, dialect)
        return stmt


def driver_conversions(dialect: Dialect) -> dict[str, Processor | None]:
    """Conversions of the hot columns to driver values, equal to SQLAlchemy's but cheaper.

    `_event_row` gives `ts` as an aware UTC datetime and the flags as real bools, which every
    driver takes as they are; SQLite stores datetimes and dates as text in SQLAlchemy's format.
    """
    conversions: dict[str, Processor | None] = {"stream": None, "estimated": None}
    if dialect.name == "sqlite":
        conversions["ts"] = _sqlite_datetime
        conversions["day"] = date.isoformat
        # sqlite3 looks up an adapter for every bool (not for int): give it ints, as
        # SQLAlchemy does for SQLite.
        conversions["stream"] = conversions["estimated"] = int
    elif dialect.name == "postgresql":
        conversions["ts"] = None  # asyncpg takes the aware datetime
    elif dialect.name in ("mysql", "mariadb"):
        conversions["ts"] = _naive_datetime
    return conversions


def _sqlite_datetime(ts: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME format; %-formatting is ~2x cheaper than isoformat here.
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031
        ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond,
    )  # fmt: skip


def _naive_datetime(ts: datetime) -> datetime:
    return ts.replace(tzinfo=None)


async def write_events(
    engine: AsyncEngine,
    events: Iterable[UsageEvent],
    statements: Statements | None = None,
    *,
    known_new: bool = False,
) -> list[UsageEvent]:
    """Write events not yet in the ledger in one transaction; return those inserted.

    `known_new` skips the look-up of request ids already in the ledger: the caller knows
    none can be (a duplicate would then fail the whole transaction on the unique index).
    """
    unique: dict[str, UsageEvent] = {}
    for event in events:
        unique.setdefault(_fit_request_id(event.request_id), event)
    if not unique:
        return []
    async with engine.begin() as conn:
        existing = set() if known_new else await _existing_request_ids(conn, list(unique))
        fresh = [(rid, event) for rid, event in unique.items() if rid not in existing]
        if not fresh:
            return []
        unnamed = {e.key_id for _, e in fresh if e.key_id is not None and e.key_display is None}
        displays = await _key_displays(conn, unnamed)
        rows = [_event_row(rid, event, displays) for rid, event in fresh]
        statements = statements or Statements()
        insert_rows = statements.events.for_dialect(conn.dialect)
        await insert_rows.execute(conn, rows)
        sums = await _add_to_rollups(conn, statements, rows)
        await _add_to_user_rollups(conn, statements, sums)
        await _touch_keys(conn, rows)
    return [event for _, event in fresh]


def _event_row(request_id: str, event: UsageEvent, displays: dict[int, str]) -> _Row:
    ts = event.timestamp
    if ts.tzinfo is not UTC:  # the proxy's events are already UTC: skip the conversion
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    cost = event.cost_pico
    values: list[Any] = [
        request_id, ts, ts.date(), event.user, event.key_id,
        event.key_display or (displays.get(event.key_id) if event.key_id is not None else None),
        event.model, event.requested_model, event.endpoint, event.method, event.status,
        event.stream, event.prompt_tokens, event.completion_tokens, event.cached_tokens,
        event.reasoning_tokens, event.total_tokens,
        cost, event.provider_cost_pico,
        event.latency_ms, event.estimated, event.source, event.end_user, event.upstream,
        event.error_code,
    ]  # fmt: skip
    # A client-chosen model name or path longer than its column (or holding NUL, which
    # PostgreSQL refuses) would fail the whole batch on every retry: cut it to fit instead.
    for index, limit in _STRING_LIMITS:
        value = values[index]
        if isinstance(value, str) and (len(value) > limit or "\x00" in value):
            values[index] = value.replace("\x00", "")[:limit]
    return _Row._make(values)


def _fit_request_id(request_id: str) -> str:
    """Request ids that do not fit are replaced by their sha256, which keeps them unique."""
    if len(request_id) <= _REQUEST_ID_LEN and "\x00" not in request_id:
        return request_id
    return hashlib.sha256(request_id.encode()).hexdigest()


async def _existing_request_ids(conn: AsyncConnection, request_ids: list[str]) -> set[str]:
    existing: set[str] = set()
    column = UsageEventRow.request_id
    for start in range(0, len(request_ids), _SELECT_CHUNK):
        chunk = request_ids[start : start + _SELECT_CHUNK]
        existing.update(await conn.scalars(select(column).where(column.in_(chunk))))
    return existing


async def _key_displays(conn: AsyncConnection, key_ids: set[int]) -> dict[int, str]:
    if not key_ids:
        return {}
    query = select(ApiKey.id, ApiKey.display).where(ApiKey.id.in_(sorted(key_ids)))
    return {key_id: display for key_id, display in (await conn.execute(query)).all()}


RollupSums = dict[tuple[Any, ...], list[int]]


async def _add_to_rollups(
    conn: AsyncConnection, statements: Statements, rows: list[_Row]
) -> RollupSums:
    """Add the rows to usage_daily; return the batch's sums per ROLLUP_KEY."""
    sums: RollupSums = {}
    for row in rows:
        key = (
            row.day,
            row.user_name,
            row.key_id or 0,
            row.model,
            row.source,
            row.end_user or "",
            row.upstream or "",
        )
        cost = row.cost_pico
        total = sums.get(key)
        if total is None:  # in ROLLUP_SUMS order
            sums[key] = [
                1, row.prompt_tokens, row.completion_tokens, row.cached_tokens,
                row.reasoning_tokens, row.total_tokens, cost or 0, int(cost is None),
                int(row.estimated),
            ]  # fmt: skip
            continue
        total[0] += 1
        total[1] += row.prompt_tokens
        total[2] += row.completion_tokens
        total[3] += row.cached_tokens
        total[4] += row.reasoning_tokens
        total[5] += row.total_tokens
        if cost is None:
            total[7] += 1
        else:
            total[6] += cost
        if row.estimated:
            total[8] += 1
    stmt = statements.rollup_upsert(_DAILY, ROLLUP_KEY, conn.dialect.name)
    await conn.execute(stmt, _upsert_params(ROLLUP_KEY, sums))
    return sums


async def _add_to_user_rollups(
    conn: AsyncConnection, statements: Statements, sums: RollupSums
) -> None:
    """Add the batch's usage_daily sums to usage_daily_user, summed over its coarser key.

    Every writer upserts usage_daily first, then usage_daily_user, each in key order: the
    row locks of concurrent writers are always taken in the same order.
    """
    coarse: RollupSums = {}
    for key, total in sums.items():
        user_key = tuple(key[index] for index in _USER_KEY_AT)
        into = coarse.get(user_key)
        if into is None:
            coarse[user_key] = list(total)
        else:
            for index, amount in enumerate(total):
                into[index] += amount
    stmt = statements.rollup_upsert(_DAILY_USER, USER_ROLLUP_KEY, conn.dialect.name)
    await conn.execute(stmt, _upsert_params(USER_ROLLUP_KEY, coarse))


def _upsert_params(key_names: Sequence[str], sums: RollupSums) -> list[dict[str, Any]]:
    """One parameter dict per rollup row; sorted, so concurrent writers on other instances
    lock rollup rows in the same order."""
    return [
        dict(zip(key_names, key, strict=True)) | dict(zip(ROLLUP_SUMS, total, strict=True))
        for key, total in sorted(sums.items())
    ]


def _upsert(table: Table, key_names: Sequence[str], dialect: str) -> Insert:
    """INSERT a rollup row into `table`, or add its sums to the row with the same key."""
    if dialect == "mysql":
        stmt = mysql.insert(table)
        return stmt.on_duplicate_key_update(
            {name: table.c[name] + stmt.inserted[name] for name in ROLLUP_SUMS}
        )
    if dialect in ("postgresql", "sqlite"):
        stmt_pg = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        return stmt_pg.on_conflict_do_update(
            index_elements=list(key_names),
            set_={name: table.c[name] + stmt_pg.excluded[name] for name in ROLLUP_SUMS},
        )
    raise ValueError(f"unsupported database dialect '{dialect}'")


async def _touch_keys(conn: AsyncConnection, rows: list[_Row]) -> None:
    last_used: dict[int, datetime] = {}
    for row in rows:
        key_id = row.key_id
        if key_id is not None and (key_id not in last_used or row.ts > last_used[key_id]):
            last_used[key_id] = row.ts
    if not last_used:
        return
    used_at = bindparam("used_at", type_=UTCDateTime())
    stmt = (
        update(ApiKey)
        .where(ApiKey.id == bindparam("used_key"))
        .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < used_at))
        .values(last_used_at=used_at)
    )
    params = [{"used_key": key, "used_at": ts} for key, ts in sorted(last_used.items())]
    await conn.execute(stmt, params)


def _describe(error: Exception) -> str:
    """The driver's message (not the SQL and its parameters, which may be huge)."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    return f"{type(cause).__name__}: {cause}"[:500]
