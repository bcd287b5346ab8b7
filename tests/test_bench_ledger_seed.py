"""The ledger-scale benchmark's seeding (bench/ledger_seed.py) on a small ledger.

The seeded rollups must be exactly what the writer would have kept for these events, and
the report functions reading the rollups must agree with sums taken straight over the events.
"""

import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bench.ledger_seed import MODELS, SeedSpec, ledger_stats, seed_key, seed_ledger

from spendgate.keys.material import hash_key
from spendgate.ledger.engine import create_engine, sqlite_url_for_path
from spendgate.ledger.reports import GROUP_FIELDS, UsageFilter, usage_report
from spendgate.ledger.schema import ROLLUP_KEY, ROLLUP_SUMS, USER_ROLLUP_KEY
from spendgate.money import pico_to_usd

SPEC = SeedSpec(events=5_000, days=60, users=20)
END = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")
T_FIELDS = ("requests", *TOKENS, "total_tokens")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "ledger.db"
    seed_ledger(path, SPEC, end=END)
    return path


@pytest.fixture
def db(ledger: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    yield conn
    conn.close()


def _events(db: sqlite3.Connection) -> list[sqlite3.Row]:
    return db.execute("SELECT * FROM usage_events").fetchall()


def test_the_events_have_the_asked_shape(ledger: Path, db: sqlite3.Connection) -> None:
    stats = ledger_stats(ledger, 0)
    assert (stats.events, stats.users, stats.keys) == (5_000, 20, 40)
    assert stats.last_day == END.date().isoformat()
    assert date.fromisoformat(stats.first_day) >= END.date() - timedelta(days=60)
    events = _events(db)
    unpriced = {m.name for m in MODELS if m.input_usd_per_m is None}
    for row in events:
        assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
        assert 0 <= row["cached_tokens"] <= row["prompt_tokens"]
        assert row["reasoning_tokens"] <= row["completion_tokens"]
        priced = row["model"] not in unpriced or row["status"] != 200
        assert (row["cost_pico"] is not None) == priced
        assert row["day"] == row["ts"][:10]
        assert row["request_id"].startswith("req_")
    assert len({row["request_id"] for row in events}) == len(events)
    assert {row["status"] for row in events} >= {200, 429}
    assert {row["source"] for row in events} == {"proxy", "ingest"}
    assert {row["stream"] for row in events} == {0, 1}
    assert len({row["endpoint"] for row in events}) >= 3
    assert len({row["model"] for row in events}) == len(MODELS)


def test_keys_users_and_displays_are_consistent(db: sqlite3.Connection) -> None:
    keys = {
        row["id"]: row
        for row in db.execute(
            "SELECT k.id, k.key_hash, k.display, u.name FROM api_keys k "
            "JOIN users u ON u.id = k.user_id"
        )
    }
    assert {row["key_hash"] for row in keys.values()} == {
        hash_key(seed_key(i)) for i in range(SPEC.keys)
    }
    for row in _events(db):
        if row["source"] == "ingest":
            assert row["key_id"] is None
            continue
        key = keys[row["key_id"]]
        assert (row["user_name"], row["key_display"]) == (key["name"], key["display"])


def test_rollups_are_what_the_writer_would_have_summed(db: sqlite3.Connection) -> None:
    # The writer's `_add_to_rollups`, event by event, in Python.
    expected: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(ROLLUP_SUMS))
    for row in _events(db):
        key = (row["day"], row["user_name"], row["key_id"] or 0, row["model"], row["source"],
               row["end_user"] or "", row["upstream"] or "")  # fmt: skip
        cost = row["cost_pico"]
        add = (1, *(row[n] for n in TOKENS), row["total_tokens"], cost or 0, cost is None,
               row["estimated"])  # fmt: skip
        total = expected[key]
        for index, amount in enumerate(add):
            total[index] += int(amount)
    actual = {
        tuple(row[n] for n in ROLLUP_KEY): [row[n] for n in ROLLUP_SUMS]
        for row in db.execute("SELECT * FROM usage_daily")
    }
    assert actual == dict(expected)
    assert sum(r[ROLLUP_SUMS.index("unpriced_requests")] for r in actual.values()) > 0


def test_the_coarse_rollup_is_the_fine_one_summed(ledger: Path, db: sqlite3.Connection) -> None:
    at = [ROLLUP_KEY.index(name) for name in USER_ROLLUP_KEY]
    expected: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(ROLLUP_SUMS))
    for row in db.execute("SELECT * FROM usage_daily"):
        total = expected[tuple(row[ROLLUP_KEY[index]] for index in at)]
        for index, name in enumerate(ROLLUP_SUMS):
            total[index] += row[name]
    actual = {
        tuple(row[n] for n in USER_ROLLUP_KEY): [row[n] for n in ROLLUP_SUMS]
        for row in db.execute("SELECT * FROM usage_daily_user")
    }
    assert actual == dict(expected)
    stats = ledger_stats(ledger, 0)
    assert stats.user_rollup_rows == len(actual) < stats.rollup_rows


def test_rollups_per_day_user_and_model_match_the_events(db: sqlite3.Connection) -> None:
    sums = ", ".join(f"SUM({n})" for n in (*TOKENS, "total_tokens"))
    rollup = db.execute(
        f"SELECT day, user_name, model, SUM(requests), {sums}, SUM(cost_pico) "
        "FROM usage_daily GROUP BY 1, 2, 3"
    ).fetchall()
    events = db.execute(
        f"SELECT day, user_name, model, COUNT(*), {sums}, COALESCE(SUM(cost_pico), 0) "
        "FROM usage_events GROUP BY 1, 2, 3"
    ).fetchall()
    assert [tuple(r) for r in rollup] == [tuple(r) for r in events]


def _direct_totals(db: sqlite3.Connection, flt: UsageFilter, group: str | None) -> Any:
    column = {"user": "user_name", "model": "model", "day": "day", "key": "key_id"}.get(group)
    sums = ", ".join(f"SUM({n})" for n in T_FIELDS[1:])
    select = f"COUNT(*), {sums}, COALESCE(SUM(cost_pico), 0)"
    where = "WHERE day >= ? AND day <= ?"
    params = (flt.start.isoformat(), flt.end.isoformat())
    if column is None:
        return tuple(db.execute(f"SELECT {select} FROM usage_events {where}", params).fetchone())
    rows = db.execute(
        f"SELECT {column}, {select} FROM usage_events {where} GROUP BY 1", params
    ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def _t(doc: dict[str, Any]) -> tuple[Any, ...]:
    return (*(doc[n] for n in T_FIELDS), doc["cost_usd"])


def _as_t(values: tuple[int, ...]) -> tuple[Any, ...]:
    return (*values[:-1], pico_to_usd(values[-1]))


@pytest.mark.parametrize("days", [30, 90])
async def test_usage_report_from_rollups_equals_sums_over_events(
    ledger: Path, db: sqlite3.Connection, days: int
) -> None:
    flt = UsageFilter(start=END.date() - timedelta(days=days - 1), end=END.date())
    engine = create_engine(sqlite_url_for_path(str(ledger)))
    try:
        for group in (None, *GROUP_FIELDS):
            report = await usage_report(engine, flt, group)
            assert _t(report["totals"]) == _as_t(_direct_totals(db, flt, None)), group
            if group in ("user", "model", "day", "key"):
                direct = _direct_totals(db, flt, group)
                field = "key_id" if group == "key" else group
                got = {g[field]: _t(g) for g in report["groups"]}
                assert got == {k: _as_t(v) for k, v in direct.items()}, group
    finally:
        await engine.dispose()
