"""Every report query: aggregates read the daily rollups, listings read the events.

Two rollups hold the same sums: usage_daily per (day, user, key, model, source, end user,
upstream) and the coarse usage_daily_user per (day, user, model, source), a tenth of the
rows at scale. A report that only groups by and filters on the coarse key's fields reads
usage_daily_user; one that involves a key, an end user or an upstream reads usage_daily.
Both give the same exact sums (the writer keeps them in the same transaction).

Sums are exact: integer token counts and integer picodollars, turned into `Decimal` USD
only at the end (PostgreSQL and MySQL answer SUM(bigint) as a decimal; `int()` keeps it exact).
"""

import csv
import io
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    FromClause,
    RowMapping,
    Select,
    Table,
    and_,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.ledger.schema import (
    USER_ROLLUP_KEY,
    ApiKey,
    UsageDaily,
    UsageDailyUser,
    UsageEventRow,
)
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
    "provider_cost_usd",
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
_DAILY = cast(Table, UsageDaily.__table__)
_DAILY_USER = cast(Table, UsageDailyUser.__table__)
_EVENTS = UsageEventRow.__table__
# group field -> rollup column
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


# The filter fields usage_daily_user does not have (they must be unset to read it).
_FINE_FILTERS = ("key_id", "end_user", "upstream")


def rollup_for(flt: UsageFilter, group_by: str | None = None) -> Table:
    """The coarsest rollup that answers `flt` grouped by `group_by` exactly."""
    if group_by is not None and _GROUP_COLUMNS.get(group_by) not in USER_ROLLUP_KEY:
        return _DAILY
    if any(getattr(flt, name) not in (None, "") for name in _FINE_FILTERS):
        return _DAILY
    return _DAILY_USER


def _sum_columns(table: Table = _DAILY) -> list[ColumnElement[Any]]:
    return [func.coalesce(func.sum(table.c[name]), 0).label(name) for name in _SUM_NAMES]


def _totals(row: Mapping[Any, Any] | None) -> dict[str, Any]:
    """T: request and token counts as ints, `cost_usd` as an exact Decimal."""
    row = row or {}
    totals: dict[str, Any] = {name: int(row.get(name) or 0) for name in ("requests", *TOKEN_FIELDS)}
    totals["cost_usd"] = pico_to_usd(int(row.get("cost_pico") or 0))
    return totals


def _conditions(table: FromClause, flt: UsageFilter) -> list[ColumnElement[bool]]:
    """WHERE terms for `flt` on a rollup or usage_events.

    usage_daily and usage_events have every filter column; usage_daily_user only those of
    its key, so only a filter `rollup_for` chose it for may be applied to it.
    """
    columns = table.c
    return [columns.day >= flt.start, columns.day <= flt.end, *_equalities(table, flt)]


def _equalities(table: FromClause, flt: UsageFilter) -> list[ColumnElement[bool]]:
    """WHERE terms for `flt`'s equality filters (everything but the date range)."""
    columns = table.c
    conditions: list[ColumnElement[bool]] = []
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
    table = rollup_for(flt, group_by)
    conditions = _conditions(table, flt)
    report: dict[str, Any] = {"start": flt.start.isoformat(), "end": flt.end.isoformat()}
    async with engine.connect() as conn:
        if group_by is None:
            query = select(*_sum_columns(table)).where(*conditions)
            totals = (await conn.execute(query)).mappings()
            return report | {"totals": _totals(totals.first()), "groups": []}
        rows = await _grouped_rows(conn, table, group_by, conditions)
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
    conn: AsyncConnection, table: Table, group_by: str, conditions: list[ColumnElement[bool]]
) -> Sequence[Mapping[Any, Any]]:
    """One row per group of the rollup `table`: `value` (and `display` for keys), the sums."""
    if group_by != "user":
        query = _group_query(table, group_by).where(*conditions)
        rows: Sequence[RowMapping] = (await conn.execute(query)).mappings().all()
        return rows
    # Grouped by (day, user) first, the rollup is read in the order of its key (day,
    # user_name, ...) and summed as it streams, with no sort of the window's rows; only the
    # few (day, user) sums are then grouped by user. SQLite, 30 days of the 5M-event bench
    # ledger: 1.3x faster than GROUP BY user_name (which sorts every row) and than adding up
    # the (day, user) rows in Python.
    per_day = _per_day_and_user(table, conditions).subquery()
    query = select(
        per_day.c.value, *(func.sum(per_day.c[name]).label(name) for name in _SUM_NAMES)
    ).group_by(per_day.c.value)
    grouped: Sequence[RowMapping] = (await conn.execute(query)).mappings().all()
    return grouped


def _per_day_and_user(table: Table, conditions: list[ColumnElement[bool]]) -> Select[Any]:
    """The rollup's sums per (day, user as `value`), read in the rollup's key order."""
    columns = table.c
    return (
        select(columns.day, columns.user_name.label("value"), *_sum_columns(table))
        .where(*conditions)
        .group_by(columns.day, columns.user_name)
    )


async def daily_user_costs(engine: AsyncEngine, flt: UsageFilter) -> list[dict[str, Any]]:
    """`{"day", "user", "requests", "cost_usd"}` per day and user with usage, by day then user."""
    table = rollup_for(flt, "user")
    query = _per_day_and_user(table, _conditions(table, flt))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    days = [
        {
            "day": row["day"].isoformat(),
            "user": row["value"],
            "requests": int(row["requests"]),
            "cost_usd": pico_to_usd(int(row["cost_pico"])),
        }
        for row in rows
    ]
    days.sort(key=lambda item: (item["day"], item["user"]))
    return days


def _group_query(table: Table, group_by: str) -> Select[Any]:
    column = table.c[_GROUP_COLUMNS[group_by]].label("value")
    if group_by != "key":
        return select(column, *_sum_columns(table)).group_by(column)
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
    """One usage event as the CSV columns name it (costs as Decimal, None when unknown)."""
    cost = row["cost_pico"]
    provider_cost = row["provider_cost_pico"]
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
        "provider_cost_usd": None if provider_cost is None else pico_to_usd(provider_cost),
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


async def usage_events_page(
    engine: AsyncEngine, flt: UsageFilter, *, limit: int, offset: int = 0
) -> list[dict[str, Any]]:
    """One page of the filtered events, newest first, as `event_fields` gives them.

    The date range is applied to `ts` (`day` is the UTC date of `ts`), so the index on
    `ts`, or on (user_name, ts) for one user, serves both the range and the order.
    """
    first = datetime.combine(flt.start, time.min, tzinfo=UTC)
    conditions = [UsageEventRow.ts >= first, *_equalities(_EVENTS, flt)]
    if flt.end < date.max:
        after_last = datetime.combine(flt.end + timedelta(days=1), time.min, tzinfo=UTC)
        conditions.append(UsageEventRow.ts < after_last)
    query = (
        select(UsageEventRow)
        .where(*conditions)
        .order_by(UsageEventRow.ts.desc(), UsageEventRow.id.desc())
        .limit(limit)
        .offset(offset)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [event_fields(row) for row in rows]


async def monitor(
    engine: AsyncEngine, today: date, *, top: int = 10, recent: int = 20
) -> dict[str, Any]:
    """Today's totals and active users, this month's top users by cost, the latest events.

    Everything is per user and day: read from the coarse rollup usage_daily_user.
    """
    daily = UsageDailyUser
    cost = func.coalesce(func.sum(daily.cost_pico), 0)
    requests = func.coalesce(func.sum(daily.requests), 0)
    top_query = (
        select(daily.user_name, cost.label("cost_pico"), requests.label("requests"))
        .where(daily.day >= today.replace(day=1), daily.day <= today)
        .group_by(daily.user_name)
        .order_by(cost.desc(), requests.desc(), daily.user_name)
        .limit(top)
    )
    active = select(func.count(func.distinct(daily.user_name))).where(daily.day == today)
    latest = (
        select(UsageEventRow)
        .order_by(UsageEventRow.ts.desc(), UsageEventRow.id.desc())
        .limit(recent)
    )
    async with engine.connect() as conn:
        today_query = select(*_sum_columns(_DAILY_USER)).where(daily.day == today)
        today_row = await conn.execute(today_query)
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
    """Delete events of days before `before` (both rollups stay); return how many went."""
    async with engine.begin() as conn:
        result = await conn.execute(delete(UsageEventRow).where(UsageEventRow.day < before))
    return int(result.rowcount)
