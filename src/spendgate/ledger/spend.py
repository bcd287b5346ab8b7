"""Spend read from the ledger: the baselines the limit backends start counting from.

Whole days come from the daily rollups; the day of `before` is read from the events, so
the answer is exactly the cost of every event of the user (or key) with `since` <= day and
timestamp < `before`. Integer picodollars throughout.
"""

from datetime import date, datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.schema import UsageDaily, UsageEventRow


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
    daily: list[ColumnElement[bool]] = []
    events: list[ColumnElement[bool]] = []
    if user is not None:
        daily.append(UsageDaily.user_name == user)
        events.append(UsageEventRow.user_name == user)
    if key_id is not None:
        daily.append(UsageDaily.key_id == key_id)
        events.append(UsageEventRow.key_id == key_id)
    if since is not None:
        daily.append(UsageDaily.day >= since)
    async with engine.connect() as conn:
        if before is None:
            total = await conn.scalar(select(func.sum(UsageDaily.cost_pico)).where(*daily))
            return int(total or 0)
        cut = before.date()
        if since is not None and since > cut:
            return 0
        whole = await conn.scalar(
            select(func.sum(UsageDaily.cost_pico)).where(*daily, UsageDaily.day < cut)
        )
        partial = await conn.scalar(
            select(func.sum(UsageEventRow.cost_pico)).where(
                *events, UsageEventRow.day == cut, UsageEventRow.ts < before
            )
        )
    return int(whole or 0) + int(partial or 0)
