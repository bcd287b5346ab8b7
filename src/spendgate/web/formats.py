"""How the console writes money, counts and times (Jinja filters).

Money keeps every digit of the exact decimal (at least two decimals: `$0.000435`,
`$12.50`), so a page and the JSON API never disagree about a cent. Times are UTC.
"""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from spendgate.money import format_usd

NONE_TEXT = "—"


def usd(value: Decimal | None) -> str:
    """`$` and the exact amount with at least two decimals; a dash for none."""
    if value is None:
        return NONE_TEXT
    text = format_usd(value)
    whole, _, decimals = text.partition(".")
    sign, digits = ("-", whole[1:]) if whole.startswith("-") else ("", whole)
    return f"{sign}${digits}.{decimals.ljust(2, '0')}"


def plain_usd(value: Decimal | None) -> str:
    """The exact amount as a form field holds it (`12.5`); empty for none."""
    return "" if value is None else format_usd(value)


def when(value: datetime | None, missing: str = NONE_TEXT) -> str:
    """`2025-01-31 23:59:59 UTC`; `missing` for none."""
    if value is None:
        return missing
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def day_value(value: datetime | None) -> str:
    """The UTC date of `value` as an `<input type=date>` holds it (empty for none)."""
    return "" if value is None else value.astimezone(UTC).date().isoformat()


def period(value: str | None) -> str:
    """A budget period for display (a budget without one is monthly)."""
    return value or "monthly"


def limits_text(limits: dict[str, Any] | None) -> str:
    """`requests_per_minute 60, tokens_per_day 100000`; a dash for none."""
    if not limits:
        return NONE_TEXT
    return ", ".join(f"{name} {value}" for name, value in limits.items())


def path_part(value: object) -> str:
    """`value` quoted as one URL path segment (a user name with `?` or `#` stays one)."""
    return quote(str(value), safe="")


def event_time(timestamp: str) -> str:
    """An event's ISO timestamp (`…T…Z`) as `2025-01-31 23:59:59`."""
    return timestamp[:19].replace("T", " ")


FILTERS = {
    "usd": usd,
    "plain_usd": plain_usd,
    "when": when,
    "day_value": day_value,
    "period": period,
    "limits_text": limits_text,
    "path_part": path_part,
    "event_time": event_time,
}
