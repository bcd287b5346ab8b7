"""Spend read from the ledger: the baselines the limit backends start counting from.

Every day up to and including the day of `before` comes from the daily rollups; from the
day of `before` the cost of the events at or after `before` is taken off again. So the
answer is exactly the cost of every event of the user (or key) with `since` <= day and
timestamp < `before`, and the events read are only the few written since `before` (found
through the `ts` index), not the whole day's: a baseline read at start-up stays cheap on a
ledger with millions of events. One statement, so rollups and events come from one
snapshot. Integer picodollars throughout. A user's spend is read from the coarse rollup
usage_daily_user (a few rows per day), a key's from usage_daily.
"""

from datetime import UTC, date, datetime, time, timedelta
from typing import cast

from sqlalchemy import ColumnElement, Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.schema import UsageDaily, UsageDailyUser, UsageEventRow

_DAILY = cast(Table, UsageDaily.__table__)
_DAILY_USER = cast(Table, UsageDailyUser.__table__)


async def spent_before(
    engine: AsyncEngine,
    *,
    user: str | None = None,
    key_id: int | None = None,
    since: date | None = None,
    before: datetime | None = None,
) -> int:
    """Picodollars spent by `user` or `key_id` from day `since` up to (not including) `before`.

    `since` None means from the beginning; `before` None means up to now, everything written.
    """
    rollup = _DAILY if key_id is not None else _DAILY_USER
    daily: list[ColumnElement[bool]] = []
    events: list[ColumnElement[bool]] = []
    if user is not None:
        daily.append(rollup.c.user_name == user)
        events.append(UsageEventRow.user_name == user)
    if key_id is not None:
        daily.append(rollup.c.key_id == key_id)
        events.append(UsageEventRow.key_id == key_id)
    if since is not None:
        daily.append(rollup.c.day >= since)
    async with engine.connect() as conn:
        if before is None:
            total = await conn.scalar(select(func.sum(rollup.c.cost_pico)).where(*daily))
            return int(total or 0)
        cut = before.date()
        if since is not None and since > cut:
            return 0
        through_cut = (
            select(func.coalesce(func.sum(rollup.c.cost_pico), 0))
            .where(*daily, rollup.c.day <= cut)
            .scalar_subquery()
        )
        after_before = (
            select(func.coalesce(func.sum(UsageEventRow.cost_pico), 0))
            .where(*events, *_rest_of_day(before))
            .scalar_subquery()
        )
        row = (await conn.execute(select(through_cut, after_before))).one()
    return int(row[0]) - int(row[1])


def _rest_of_day(before: datetime) -> list[ColumnElement[bool]]:
    """`before` <= ts < the next UTC midnight, as a `ts` range (so the `ts` index serves it)."""
    conditions = [UsageEventRow.ts >= before]
    try:
        midnight = datetime.combine(before.date() + timedelta(days=1), time.min, tzinfo=UTC)
    except OverflowError:  # the last representable day: no next midnight
        return conditions
    return [*conditions, UsageEventRow.ts < midnight]
