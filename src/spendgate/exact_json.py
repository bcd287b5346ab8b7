"""JSON rendering that writes `Decimal` values as plain numbers with every digit.

`orjson` and the standard library can only write binary floats; the contract wants money
totals written exactly, so decimals are rendered as number literals here.
"""

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import Response

from spendgate.money import format_usd


def dumps_exact(value: Any) -> bytes:
    """Serialise `value` to JSON bytes, decimals as exact number literals."""
    out: list[bytes] = []
    _write(value, out)
    return b"".join(out)


def _write(value: Any, out: list[bytes]) -> None:
    if isinstance(value, Decimal):
        out.append(format_usd(value).encode())
    elif isinstance(value, Mapping):
        out.append(b"{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(b",")
            out.append(orjson.dumps(str(key)))
            out.append(b":")
            _write(item, out)
        out.append(b"}")
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        out.append(b"[")
        for index, item in enumerate(value):
            if index:
                out.append(b",")
            _write(item, out)
        out.append(b"]")
    elif isinstance(value, datetime | date):
        out.append(orjson.dumps(value.isoformat()))
    else:
        out.append(orjson.dumps(value))


class ExactJSONResponse(Response):
    """A JSON response whose decimals keep every digit."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps_exact(content)
