"""Every report query: aggregates read the daily rollups, listings read the events.

Sums are exact: integer token counts and integer picodollars, turned into `Decimal` USD
only at the end (PostgreSQL and MySQL answer SUM(bigint) as a decimal; `int()` keeps it exact).
"""

import csv
import io
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    RowMapping,
    Select,
    and_,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.ledger.schema import ApiKey, UsageDaily, UsageEventRow
from spendgate.money import format_usd, pico_to_usd

GROUP_FIELDS = ("user", "key", "model", "day", "end_user", "upstream", "source")
CSV_COLUMNS = (
    "timestamp",
    "request_id",
    "user",
    "key",
    "model",
    "endpoint",
    "status",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "latency_ms",
    "estimated",
    "source",
    "end_user",
    "upstream",
    "requested_model",
)
TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
)
CSV_PAGE = 1000

_SUM_NAMES = ("requests", *TOKEN_FIELDS, "cost_pico")
_DAILY = UsageDaily.__table__
_EVENTS = UsageEventRow.__table__
# group field -> usage_daily column
_GROUP_COLUMNS = {
    "user": "user_name",
    "key": "key_id",
    "model": "model",
    "day": "day",
    "end_user": "end_user",
    "upstream": "upstream",
    "source": "source",
}


@dataclass(frozen=True)
class UsageFilter:
    """Which usage a report covers: UTC days `start`..`end` inclusive, plus equality filters."""

    start: date
    end: date
    user: str | None = None
    key_id: int | None = None
    model: str | None = None
    source: str | None = None
    end_user: str | None = None
    upstream: str | None = None


def _sum_columns() -> list[ColumnElement[Any]]:
    return [func.coalesce(func.sum(getattr(UsageDaily, n)), 0).label(n) for n in _SUM_NAMES]


def _totals(row: Mapping[Any, Any] | None) -> dict[str, Any]:
    """T: request and token counts as ints, `cost_usd` as an exact Decimal."""
    row = row or {}
    totals: dict[str, Any] = {name: int(row.get(name) or 0) for name in ("requests", *TOKEN_FIELDS)}
    totals["cost_usd"] = pico_to_usd(int(row.get("cost_pico") or 0))
    return totals


def _conditions(table: FromClause, flt: UsageFilter) -> list[ColumnElement[bool]]:
    """WHERE terms for `flt` on usage_daily or usage_events (both have these columns)."""
    columns = table.c
    conditions = [columns.day >= flt.start, columns.day <= flt.end]
    for name, value in (
        ("user_name", flt.user),
        ("key_id", flt.key_id),
        ("model", flt.model),
        ("source", flt.source),
        ("end_user", flt.end_user),
        ("upstream", flt.upstream),
    ):
        if value is not None and value != "":  # an empty filter (`?model=`) filters nothing
            conditions.append(columns[name] == value)
    return conditions


async def usage_report(
    engine: AsyncEngine, flt: UsageFilter, group_by: str | None
) -> dict[str, Any]:
    """Totals for the filter, and per-group totals when `group_by` names a GROUP_FIELDS entry."""
    if group_by is not None and group_by not in GROUP_FIELDS:
        raise ValueError(f"cannot group by '{group_by}'")
    conditions = _conditions(_DAILY, flt)
    report: dict[str, Any] = {"start": flt.start.isoformat(), "end": flt.end.isoformat()}
    async with engine.connect() as conn:
        if group_by is None:
            totals = (await conn.execute(select(*_sum_columns()).where(*conditions))).mappings()
            return report | {"totals": _totals(totals.first()), "groups": []}
        rows = await _grouped_rows(conn, group_by, conditions)
    groups = [_totals(row) | _group_value(group_by, row) for row in rows]
    if group_by == "day":
        groups.sort(key=lambda group: str(group["day"]))
    else:
        groups.sort(key=lambda g: (-g["cost_usd"], -g["requests"], str(g[group_by])))
    # Every rollup row falls in exactly one group: the totals are the groups' integer sums
    # (exact), without a second pass over the rollups.
    return report | {"totals": _sum_of(rows), "groups": groups}


def _sum_of(rows: Sequence[Mapping[Any, Any]]) -> dict[str, Any]:
    """T of the union of grouped rows: their integer sums added up."""
    return _totals({name: sum(int(row[name] or 0) for row in rows) for name in _SUM_NAMES})


async def _grouped_rows(
    conn: AsyncConnection, group_by: str, conditions: list[ColumnElement[bool]]
) -> Sequence[Mapping[Any, Any]]:
    """One row per group: `value` (and `display` for keys) and the sums."""
    if group_by != "user":
        query = _group_query(group_by).where(*conditions)
        rows: Sequence[RowMapping] = (await conn.execute(query)).mappings().all()
        return rows
    # Grouped by (day, user) the rollups are read in the order of their unique index
    # (day, user_name, ...), so the engine streams them instead of sorting the whole window
    # (SQLite: 1.6x faster at 270,000 rows); the few days per user are added up here.
    daily = (
        select(UsageDaily.day, UsageDaily.user_name.label("value"), *_sum_columns())
        .where(*conditions)
        .group_by(UsageDaily.day, UsageDaily.user_name)
    )
    merged: dict[str, dict[str, Any]] = {}
    for row in (await conn.execute(daily)).mappings():
        total = merged.setdefault(
            row["value"], {"value": row["value"]} | dict.fromkeys(_SUM_NAMES, 0)
        )
        for name in _SUM_NAMES:
            total[name] += int(row[name])
    return list(merged.values())


def _group_query(group_by: str) -> Select[Any]:
    column = _DAILY.c[_GROUP_COLUMNS[group_by]].label("value")
    if group_by != "key":
        return select(column, *_sum_columns()).group_by(column)
    display = ApiKey.display.label("display")
    query = select(column, display, *_sum_columns()).outerjoin(
        ApiKey, ApiKey.id == UsageDaily.key_id
    )
    return query.group_by(UsageDaily.key_id, ApiKey.display)


def _group_value(group_by: str, row: Mapping[Any, Any]) -> dict[str, Any]:
    value = row["value"]
    if group_by == "key":
        return {"key": row["display"], "key_id": value or None}
    if group_by == "day":
        return {"day": value.isoformat()}
    if group_by in ("end_user", "upstream"):
        return {group_by: value or None}  # '' in the rollup key stands for none
    return {group_by: value}


async def key_totals(engine: AsyncEngine, key_id: int) -> dict[str, Any]:
    """T for one key over all time."""
    query = select(*_sum_columns()).where(UsageDaily.key_id == key_id)
    async with engine.connect() as conn:
        return _totals((await conn.execute(query)).mappings().first())


def event_fields(row: RowMapping) -> dict[str, Any]:
    """One usage event as the CSV columns name it (cost as Decimal, None when unpriced)."""
    cost = row["cost_pico"]
    return {
        "timestamp": row["ts"].isoformat().replace("+00:00", "Z"),
        "request_id": row["request_id"],
        "user": row["user_name"],
        "key": row["key_display"],
        "model": row["model"],
        "endpoint": row["endpoint"],
        "status": row["status"],
        "stream": bool(row["stream"]),
        **{name: int(row[name]) for name in TOKEN_FIELDS},
        "cost_usd": None if cost is None else pico_to_usd(cost),
        "latency_ms": row["latency_ms"],
        "estimated": bool(row["estimated"]),
        "source": row["source"],
        "end_user": row["end_user"],
        "upstream": row["upstream"],
        "requested_model": row["requested_model"],
    }


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format_usd(value)
    return str(value)


async def iter_usage_csv(engine: AsyncEngine, flt: UsageFilter) -> AsyncIterator[str]:
    """CSV text of the filtered events ordered by time, header first, read page by page."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    conditions = _conditions(_EVENTS, flt)
    ordering = (UsageEventRow.ts, UsageEventRow.id)
    after: tuple[Any, int] | None = None
    while True:
        query = select(UsageEventRow).where(*conditions)
        if after is not None:  # keyset paging: no OFFSET scans, no connection held between pages
            ts, last_id = after
            query = query.where(
                or_(UsageEventRow.ts > ts, and_(UsageEventRow.ts == ts, UsageEventRow.id > last_id))
            )
        async with engine.connect() as conn:
            page = query.order_by(*ordering).limit(CSV_PAGE)
            rows = (await conn.execute(page)).mappings().all()
        if not rows:
            return
        buffer.seek(0)
        buffer.truncate()
        for row in rows:
            fields = event_fields(row)
            writer.writerow([_csv_cell(fields[name]) for name in CSV_COLUMNS])
        yield buffer.getvalue()
        after = (rows[-1]["ts"], rows[-1]["id"])
        if len(rows) < CSV_PAGE:
            return


async def monitor(
    engine: AsyncEngine, today: date, *, top: int = 10, recent: int = 20
) -> dict[str, Any]:
    """Today's totals and active users, this month's top users by cost, the latest events."""
    cost = func.coalesce(func.sum(UsageDaily.cost_pico), 0)
    requests = func.coalesce(func.sum(UsageDaily.requests), 0)
    top_query = (
        select(UsageDaily.user_name, cost.label("cost_pico"), requests.label("requests"))
        .where(UsageDaily.day >= today.replace(day=1), UsageDaily.day <= today)
        .group_by(UsageDaily.user_name)
        .order_by(cost.desc(), requests.desc(), UsageDaily.user_name)
        .limit(top)
    )
    active = select(func.count(func.distinct(UsageDaily.user_name))).where(UsageDaily.day == today)
    latest = (
        select(UsageEventRow)
        .order_by(UsageEventRow.ts.desc(), UsageEventRow.id.desc())
        .limit(recent)
    )
    async with engine.connect() as conn:
        today_row = await conn.execute(select(*_sum_columns()).where(UsageDaily.day == today))
        today_totals = _totals(today_row.mappings().first())
        active_users = int(await conn.scalar(active) or 0)
        top_rows = (await conn.execute(top_query)).mappings().all()
        recent_rows = (await conn.execute(latest)).mappings().all()
    return {
        "today": today_totals,
        "active_users_today": active_users,
        "top_users": [
            {
                "user": row["user_name"],
                "cost_usd": pico_to_usd(int(row["cost_pico"])),
                "requests": int(row["requests"]),
            }
            for row in top_rows
        ],
        "recent": [event_fields(row) for row in recent_rows],
    }


async def purge_before(engine: AsyncEngine, before: date) -> int:
    """Delete events of days before `before` (rollups stay); return how many were deleted."""
    async with engine.begin() as conn:
        result = await conn.execute(delete(UsageEventRow).where(UsageEventRow.day < before))
    return int(result.rowcount)
