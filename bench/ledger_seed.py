"""Seeding a SQLite ledger with many synthetic usage events and their exact daily rollups.

Users and keys go through `spendgate.ledger.store.Store` (so every column and foreign key
is what the gateway writes); the events are generated inside SQLite by one INSERT ... SELECT
per batch (no Python per row), and the `usage_daily` rollups are then built from the events
with one INSERT ... SELECT ... GROUP BY over the writer's rollup key (`schema.ROLLUP_KEY`):
the same sums `LedgerWriter` would have added up event by event. The coarse rollup
`usage_daily_user` is `usage_daily` summed over `schema.USER_ROLLUP_KEY`, built the same way.

Shape: `users` users with two keys each, key traffic Zipf-distributed (a few keys carry
most of it), 6 models (one unpriced, one embedding, one reasoning), chat/responses/
completions/embeddings, ~38 % streamed, ~2 % errors, 1.6 % `ingest` events without a key,
end-user tags on every tenth key (512 end users each), spread evenly over `days` days
ending now. Raw keys are derived from their index (`seed_key`), so a cached ledger's keys
still work: these are benchmark keys, not secrets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from spendgate.keys.material import KEY_PREFIX, display_key, hash_key
from spendgate.ledger.engine import create_engine, sqlite_url_for_path, upgrade
from spendgate.ledger.schema import ROLLUP_KEY, ROLLUP_SUMS, USER_ROLLUP_KEY
from spendgate.ledger.store import Store

SEED_VERSION = 2  # bump when the generated data changes (cache key; so is the schema head)
KEY_SLOTS = 1 << 16  # weighted key picks: 16 random bits index seed_keys
MODEL_SLOTS = 1 << 10
BATCH = 250_000  # events per INSERT ... SELECT transaction
HEAVY_USER = "user-000"  # owns key 0, the busiest key; carries budgets
HEAVY_USER_BUDGET = Decimal(1_000_000)

Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class Model:
    name: str
    weight: int  # out of MODEL_SLOTS
    input_usd_per_m: Decimal | None  # None: unpriced (cost NULL)
    cached_usd_per_m: Decimal | None
    output_usd_per_m: Decimal | None
    reasoning: bool = False
    embedding: bool = False


MODELS = (
    Model("gpt-4o-mini", 400, Decimal("0.15"), Decimal("0.075"), Decimal("0.60")),
    Model("gpt-4o", 220, Decimal("2.50"), Decimal("1.25"), Decimal("10.00")),
    Model("gpt-4.1", 150, Decimal("2.00"), Decimal("0.50"), Decimal("8.00")),
    Model("o4-mini", 100, Decimal("1.10"), Decimal("0.275"), Decimal("4.40"), reasoning=True),
    Model("text-embedding-3-small", 120, Decimal("0.02"), None, Decimal(0), embedding=True),
    Model("local-llama-3.1-8b", 34, None, None, None),
)


@dataclass(frozen=True)
class SeedSpec:
    events: int
    days: int = 60
    users: int = 200
    keys_per_user: int = 2
    zipf: float = 1.0

    @property
    def keys(self) -> int:
        return self.users * self.keys_per_user


@dataclass(frozen=True)
class SeedStats:
    events: int
    rollup_rows: int
    user_rollup_rows: int
    users: int
    keys: int
    first_day: str
    last_day: str
    seconds: float
    bytes: int


def seed_key(index: int) -> str:
    """The raw gateway key of seeded key number `index` (derived, so caches keep working)."""
    digest = hashlib.sha256(f"spendgate-bench-ledger-key-{index}".encode()).digest()
    return KEY_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def user_of(index: int, spec: SeedSpec) -> str:
    """Key `index` belongs to user `index % users` (key 0, the busiest, to HEAVY_USER)."""
    return f"user-{index % spec.users:03d}"


async def create_accounts(path: Path, spec: SeedSpec) -> list[int]:
    """Migrate the database and create the users and keys; return the key ids by index."""
    engine = create_engine(sqlite_url_for_path(str(path)))
    try:
        await upgrade(engine)
        store = Store(engine)
        for number in range(spec.users):
            name = f"user-{number:03d}"
            budget = HEAVY_USER_BUDGET if name == HEAVY_USER else None
            period = "monthly" if budget is not None else None
            await store.create_user(name, f"{name}@example.test", budget, period)
        ids = []
        for index in range(spec.keys):
            key = seed_key(index)
            daily = HEAVY_USER_BUDGET if index == 0 else None
            record = await store.create_key(
                user_of(index, spec), hash_key(key), display_key(key), note=f"seed key {index}",
                budget_usd=daily, budget_period="daily" if daily is not None else None,
            )  # fmt: skip
            ids.append(record.id)
        return ids
    finally:
        await engine.dispose()


def _pico_per_token(usd_per_m: Decimal | None) -> int | None:
    return None if usd_per_m is None else int(usd_per_m * 1_000_000)


def _key_slots(spec: SeedSpec) -> list[int]:
    """Slot -> key index by the inverse Zipf CDF (the rarest keys may get no slot)."""
    weights = [1 / (rank + 1) ** spec.zipf for rank in range(spec.keys)]
    total = sum(weights)
    slots, cumulative, index = [], 0.0, 0
    for slot in range(KEY_SLOTS):
        target = (slot + 0.5) / KEY_SLOTS * total
        while cumulative + weights[index] < target and index < spec.keys - 1:
            cumulative += weights[index]
            index += 1
        slots.append(index)
    return slots


def _fill_pick_tables(conn: sqlite3.Connection, spec: SeedSpec, key_ids: list[int]) -> None:
    conn.execute(
        "CREATE TEMP TABLE seed_keys (slot INTEGER PRIMARY KEY, key_id INTEGER, "
        "user_name TEXT, key_display TEXT, app INTEGER)"
    )
    rows = []
    for slot, index in enumerate(_key_slots(spec)):
        key = seed_key(index)
        rows.append((slot, key_ids[index], user_of(index, spec), display_key(key), index % 10 == 3))
    conn.executemany("INSERT INTO seed_keys VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute(
        "CREATE TEMP TABLE seed_models (slot INTEGER PRIMARY KEY, model TEXT, in_pico INTEGER, "
        "cached_pico INTEGER, out_pico INTEGER, reasoning INTEGER, embedding INTEGER)"
    )
    if sum(m.weight for m in MODELS) != MODEL_SLOTS:
        raise ValueError("model weights must add up to MODEL_SLOTS")
    model_rows, slot = [], 0
    for m in MODELS:
        prices = (m.input_usd_per_m, m.cached_usd_per_m or m.input_usd_per_m, m.output_usd_per_m)
        for _ in range(m.weight):
            model_rows.append(
                (slot, m.name, *(_pico_per_token(p) for p in prices), m.reasoning, m.embedding)
            )
            slot += 1
    conn.executemany("INSERT INTO seed_models VALUES (?, ?, ?, ?, ?, ?, ?)", model_rows)


# One batch of events [:lo, :hi). Random bits: `a` picks key (16 bits), model (10), status
# (10), stream (4), endpoint (4), end user (9), source (6); `b` the token counts, latency
# and the estimated flag; `c` the timestamp's jitter inside its step. MATERIALIZED keeps
# every random() evaluated once per row (a flattened CTE would call it per reference);
# the later CTEs are deterministic and may be flattened.
_EVENTS_SQL = """
WITH RECURSIVE
  s(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM s WHERE i + 1 < :hi),
  r AS MATERIALIZED (SELECT i, random() AS a, random() AS b, random() AS c FROM s),
  p AS (
    SELECT r.i, r.b,
      :start_us + r.i * :step_us + abs(r.c % :step_us) AS us,
      (r.a >> 53) & 63 = 0 AS ingest,
      CASE WHEN (r.a >> 53) & 63 = 0 THEN 200
           WHEN (r.a >> 26) & 1023 < 10 THEN 429
           WHEN (r.a >> 26) & 1023 < 14 THEN 500
           WHEN (r.a >> 26) & 1023 < 18 THEN 400
           WHEN (r.a >> 26) & 1023 < 20 THEN 502
           ELSE 200 END AS status,
      CASE WHEN m.embedding THEN 'embeddings'
           WHEN (r.a >> 40) & 15 < 12 THEN 'chat/completions'
           WHEN (r.a >> 40) & 15 < 15 THEN 'responses'
           ELSE 'completions' END AS endpoint,
      k.key_id, k.user_name, k.key_display,
      CASE WHEN k.app THEN printf('enduser-%03d', (r.a >> 44) & 511) END AS end_user,
      m.model, m.in_pico, m.cached_pico, m.out_pico, m.reasoning, m.embedding,
      (r.a >> 36) & 15 AS stream_pick
    FROM r
    JOIN seed_keys k ON k.slot = r.a & 65535
    JOIN seed_models m ON m.slot = (r.a >> 16) & 1023
  ),
  t AS (
    SELECT p.*,
      CASE WHEN status = 200 THEN (16 + ((b & 4095) >> 1)) << ((b >> 12) & 3) ELSE 0 END
        AS prompt,
      CASE WHEN status <> 200 OR embedding THEN 0
           ELSE 1 + ((b >> 14) & 1023) + CASE WHEN reasoning THEN (b >> 33) & 2047 ELSE 0 END
           END AS completion,
      CASE WHEN status = 200 AND reasoning THEN (b >> 33) & 2047 ELSE 0 END AS reasoning_tokens,
      CASE WHEN status = 200 AND NOT ingest AND endpoint IN ('chat/completions', 'completions')
           AND stream_pick < 6 THEN 1 ELSE 0 END AS stream
    FROM p
  ),
  u AS (
    SELECT t.*,
      CASE WHEN status = 200 AND NOT embedding AND ((b >> 31) & 3) = 0
           THEN prompt * ((b >> 24) & 127) / 128 ELSE 0 END AS cached
    FROM t
  )
INSERT INTO usage_events (
  request_id, ts, day, user_name, key_id, key_display, model, requested_model, endpoint,
  method, status, stream, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,
  total_tokens, cost_pico, latency_ms, estimated, source, end_user, upstream, error_code)
SELECT
  'req_' || lower(hex(randomblob(12))),
  strftime('%Y-%m-%d %H:%M:%S', us / 1000000, 'unixepoch') || printf('.%06d', us % 1000000),
  date(us / 1000000, 'unixepoch'),
  user_name,
  CASE WHEN ingest THEN NULL ELSE key_id END,
  CASE WHEN ingest THEN NULL ELSE key_display END,
  model, model, endpoint, 'POST', status, stream,
  prompt, completion, cached, reasoning_tokens, prompt + completion,
  CASE WHEN status <> 200 THEN 0
       WHEN in_pico IS NULL THEN NULL
       ELSE (prompt - cached) * in_pico + cached * cached_pico + completion * out_pico END,
  CASE WHEN ingest THEN 0 ELSE 80 + ((b >> 51) & 4095) END,
  stream = 1 AND ((b >> 44) & 127) = 0,
  CASE WHEN ingest THEN 'ingest' ELSE 'proxy' END,
  end_user,
  CASE WHEN ingest OR status = 429 THEN NULL ELSE 'default' END,
  CASE status WHEN 429 THEN 'rate_limit_exceeded' WHEN 400 THEN 'invalid_request'
              WHEN 502 THEN 'upstream_unavailable' END
FROM u
"""


def rollup_sql() -> str:
    """usage_daily rows from usage_events, summed as `LedgerWriter._add_to_rollups` does."""
    key_exprs = {
        "day": "day",
        "user_name": "user_name",
        "key_id": "COALESCE(key_id, 0)",
        "model": "model",
        "source": "source",
        "end_user": "COALESCE(end_user, '')",
        "upstream": "COALESCE(upstream, '')",
    }
    sum_exprs = {
        "requests": "COUNT(*)",
        "prompt_tokens": "SUM(prompt_tokens)",
        "completion_tokens": "SUM(completion_tokens)",
        "cached_tokens": "SUM(cached_tokens)",
        "reasoning_tokens": "SUM(reasoning_tokens)",
        "total_tokens": "SUM(total_tokens)",
        "cost_pico": "COALESCE(SUM(cost_pico), 0)",
        "unpriced_requests": "SUM(cost_pico IS NULL)",
        "estimated_requests": "SUM(estimated)",
    }
    if tuple(key_exprs) != ROLLUP_KEY or tuple(sum_exprs) != ROLLUP_SUMS:
        raise RuntimeError("the rollup definition changed: update bench/ledger_seed.py")
    columns = ", ".join((*ROLLUP_KEY, *ROLLUP_SUMS))
    selected = ", ".join((*key_exprs.values(), *sum_exprs.values()))
    group = ", ".join(str(n) for n in range(1, len(ROLLUP_KEY) + 1))
    return (
        f"INSERT INTO usage_daily ({columns}) SELECT {selected} FROM usage_events "
        f"GROUP BY {group} ORDER BY {group}"
    )


def user_rollup_sql() -> str:
    """usage_daily_user rows: usage_daily summed over the coarse key, as the writer keeps them."""
    key = ", ".join(USER_ROLLUP_KEY)
    columns = ", ".join((*USER_ROLLUP_KEY, *ROLLUP_SUMS))
    sums = ", ".join(f"SUM({name})" for name in ROLLUP_SUMS)
    return (
        f"INSERT INTO usage_daily_user ({columns}) SELECT {key}, {sums} FROM usage_daily "
        f"GROUP BY {key} ORDER BY {key}"
    )


def insert_events(
    path: Path, spec: SeedSpec, key_ids: list[int], end: datetime, progress: Progress = None
) -> None:
    """Generate `spec.events` events over the `spec.days` days before `end`, and the rollups."""
    span_us = spec.days * 86_400 * 1_000_000
    step_us = max(1, span_us // max(spec.events, 1))
    start_us = int(end.timestamp() * 1_000_000) - step_us * spec.events
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=OFF", "cache_size=-1000000",
                       "temp_store=MEMORY"):  # fmt: skip
            conn.execute(f"PRAGMA {pragma}")
        _fill_pick_tables(conn, spec, key_ids)
        # Secondary indexes are built once at the end (same DDL, read back from the schema):
        # far faster than keeping them up to date row by row. The unique request_id index
        # is part of the table and stays.
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'usage_events' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        for lo in range(0, spec.events, BATCH):
            params = {
                "lo": lo,
                "hi": min(lo + BATCH, spec.events),
                "start_us": start_us,
                "step_us": step_us,
            }
            conn.execute("BEGIN")
            conn.execute(_EVENTS_SQL, params)
            conn.execute("COMMIT")
            _note(progress, f"{params['hi']:,} events")
        for _, sql in indexes:
            conn.execute(sql)
        _note(progress, "event indexes built")
        conn.execute("BEGIN")
        conn.execute(rollup_sql())
        conn.execute(user_rollup_sql())
        conn.execute("COMMIT")
        _note(progress, "rollups built")
        # No ANALYZE: spendgate never runs it, so a real ledger has no planner statistics.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _note(progress: Progress, what: str) -> None:
    if progress is not None:
        progress(what)


def seed_ledger(
    path: Path, spec: SeedSpec, end: datetime | None = None, progress: Progress = None
) -> SeedStats:
    """Create a fresh ledger at `path` (must not exist) holding `spec.events` events."""
    if path.exists():
        raise FileExistsError(path)
    started = time.perf_counter()
    end = end or datetime.now(UTC)
    key_ids = asyncio.run(create_accounts(path, spec))
    _note(progress, f"{spec.users} users and {spec.keys} keys created")
    insert_events(path, spec, key_ids, end, progress)
    return ledger_stats(path, time.perf_counter() - started)


def ledger_stats(path: Path, seconds: float) -> SeedStats:
    conn = sqlite3.connect(path)
    try:
        events, first, last = conn.execute(
            "SELECT COUNT(*), MIN(day), MAX(day) FROM usage_events"
        ).fetchone()
        rollups = conn.execute("SELECT COUNT(*) FROM usage_daily").fetchone()[0]
        user_rollups = conn.execute("SELECT COUNT(*) FROM usage_daily_user").fetchone()[0]
        users = conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        keys = conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0]
    finally:
        conn.close()
    return SeedStats(events, rollups, user_rollups, users, keys, str(first), str(last), seconds,
                     path.stat().st_size)  # fmt: skip


def days_ago(end: datetime, days: int) -> str:
    return (end - timedelta(days=days)).date().isoformat()
