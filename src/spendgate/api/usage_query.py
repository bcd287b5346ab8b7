"""Parsing usage query parameters into a `UsageFilter`, with OpenAI-shaped 400s."""

from datetime import UTC, date, datetime, timedelta

from spendgate.errors import InvalidRequest
from spendgate.ledger.reports import GROUP_FIELDS, UsageFilter

DEFAULT_DAYS = 30


def parse_day(value: str | None, name: str) -> date | None:
    """A YYYY-MM-DD date, or a 400 naming the parameter."""
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date YYYY-MM-DD.", param=name) from None


def date_range(start: str | None, end: str | None) -> tuple[date, date]:
    """The inclusive UTC range, defaulting to the last 30 days."""
    today = datetime.now(UTC).date()
    end_day = parse_day(end, "end") or today
    start_day = parse_day(start, "start") or _days_before(end_day, DEFAULT_DAYS - 1)
    if start_day > end_day:
        raise InvalidRequest("'start' is after 'end'.", param="start")
    return start_day, end_day


def _days_before(day: date, days: int) -> date:
    """`day` minus `days`, stopping at the first representable date (`end=0001-01-05`)."""
    try:
        return day - timedelta(days=days)
    except OverflowError:
        return date.min


def check_group_by(group_by: str | None, allowed: tuple[str, ...] = GROUP_FIELDS) -> str | None:
    """Validate `group_by`."""
    if group_by in (None, ""):
        return None
    if group_by not in allowed:
        raise InvalidRequest(f"'group_by' must be one of {', '.join(allowed)}.", param="group_by")
    return group_by


def usage_filter(
    start: str | None,
    end: str | None,
    *,
    user: str | None = None,
    key_id: int | None = None,
    model: str | None = None,
    source: str | None = None,
    end_user: str | None = None,
    upstream: str | None = None,
) -> UsageFilter:
    """Build a filter from query parameters."""
    start_day, end_day = date_range(start, end)
    if source not in (None, "", "proxy", "ingest"):
        raise InvalidRequest("'source' must be proxy or ingest.", param="source")
    return UsageFilter(
        start=start_day,
        end=end_day,
        user=user or None,
        key_id=key_id,
        model=model or None,
        source=source or None,
        end_user=end_user or None,
        upstream=upstream or None,
    )
