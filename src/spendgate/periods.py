"""Budget periods: calendar periods in UTC and when each one resets."""

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

Period = Literal["daily", "weekly", "monthly", "total"]
PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly", "total")
EPOCH = date(1970, 1, 1)
DAY_NS = 86_400 * 10**9
_EPOCH_ORDINAL = EPOCH.toordinal()


def day_number(day: date) -> int:
    """Days from 1970-01-01 to `day` (the unit of epoch-nanosecond clocks divided by DAY_NS)."""
    return day.toordinal() - _EPOCH_ORDINAL


def day_of(number: int) -> date:
    """The date `number` days after 1970-01-01."""
    return date.fromordinal(_EPOCH_ORDINAL + number)


def period_start(period: str | None, today: date) -> date:
    """First day of the period containing `today` (weeks start on Monday)."""
    if period == "daily":
        return today
    if period == "weekly":
        return today - timedelta(days=today.weekday())
    if period == "monthly" or period is None:
        return today.replace(day=1)
    return EPOCH


def period_resets_at(period: str | None, today: date) -> datetime | None:
    """When the period containing `today` ends (None for `total`)."""
    if period == "daily":
        nxt = today + timedelta(days=1)
    elif period == "weekly":
        nxt = period_start("weekly", today) + timedelta(days=7)
    elif period == "monthly" or period is None:
        nxt = (today.replace(day=28) + timedelta(days=4)).replace(day=1)
    else:
        return None
    return datetime.combine(nxt, time.min, tzinfo=UTC)
