"""Reading console forms into the JSON API's request models.

A form sends every field, empty or not; here an empty field means "not set", the
comma-separated models become a list, the limit inputs one `limits` object and a date
input an expiry at 00:00 UTC. Validation is the API's own (its pydantic models), so a
value the API refuses is refused here with the same rule.
"""

from datetime import UTC, date, datetime, time
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from spendgate.errors import InvalidRequest
from spendgate.limits.names import LIMIT_WINDOWS

_MAX_NEXT = 2000
M = TypeVar("M", bound=BaseModel)


def field(form: FormData, name: str) -> str | None:
    """A text field, stripped; None when absent or empty."""
    value = form.get(name)
    if not isinstance(value, str):
        return None
    return value.strip() or None


def limits_field(form: FormData) -> dict[str, str] | None:
    """The limit inputs that are filled in, by limit name; None when none is."""
    limits = {name: value for name in LIMIT_WINDOWS if (value := field(form, name)) is not None}
    return limits or None


def models_field(form: FormData) -> list[str] | None:
    """`gpt-4o*, o3` as a list of globs; None when empty."""
    text = field(form, "models")
    if text is None:
        return None
    return [glob.strip() for glob in text.split(",") if glob.strip()] or None


def day_field(form: FormData, name: str) -> date | None:
    """A YYYY-MM-DD date input; None when empty, `InvalidRequest` when not a date."""
    text = field(form, name)
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{name}: must be a date YYYY-MM-DD.", param=name) from None


def start_of_day(day: date) -> datetime:
    """00:00 UTC of `day` (a key expiring on `day` stops working when it begins)."""
    return datetime.combine(day, time.min, tzinfo=UTC)


def parse_model(model: type[M], values: dict[str, Any]) -> M:
    """Validate `values` with the API's model `model`; `InvalidRequest` naming the field."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{location}: {first['msg']}" if location else str(first["msg"])
        raise InvalidRequest(message, param=location or None) from None


def safe_next(value: object, default: str) -> str:
    """A local path to go to after a form (`/ui/…`), or `default` for anything else.

    Only a single leading slash is local: `//host` and `/\\host` are other sites to browsers.
    """
    if not isinstance(value, str) or not value.startswith("/") or len(value) > _MAX_NEXT:
        return default
    if value.startswith(("//", "/\\")) or any(ord(char) < 0x21 for char in value):
        return default
    return value
