"""Read the `usage` a provider reports in a complete (non-streamed) JSON response.

Two shapes exist: chat/completions/embeddings report `prompt_tokens`/`completion_tokens`
(details under `prompt_tokens_details`/`completion_tokens_details`); the Responses API
reports `input_tokens`/`output_tokens` (details under `input_tokens_details`/
`output_tokens_details`). Both map onto the same `Usage`.

OpenRouter adds `"cost"` (USD) to either shape. It becomes `Usage.provider_cost`, read from
the number's JSON text when the raw bytes are at hand (so `0.000123` stays exactly that),
else from the parsed float's shortest repr.
"""

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, TypeGuard

import orjson

from spendgate.metering.usage import Usage

METERED_ENDPOINTS = frozenset({"chat/completions", "completions", "embeddings", "responses"})
# A reported cost at or above this (USD) is taken as garbage: it would not fit the ledger.
MAX_PROVIDER_COST = 1_000_000
# A token count above this is taken as garbage too: no request comes near it, and counts
# past it (JSON allows any integer) could overflow the ledger's 64-bit columns once priced.
MAX_TOKENS = 2**31 - 1
_COST_KEY = b'"cost"'
_COST_NUMBER = re.compile(rb"\s*:\s*(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)")
_COST_LOOKS = 8  # `"cost"` keys tried, from the end, to find the one the usage holds


def metered_endpoint(endpoint: str) -> str | None:
    """Return the canonical metered endpoint name ("chat/completions", …) or None."""
    name = endpoint.strip("/")
    if name.startswith("v1/"):
        name = name[3:]
    return name if name in METERED_ENDPOINTS else None


def read_usage(endpoint: str, body: bytes) -> Usage | None:
    """Read the usage of a complete JSON response body of a metered endpoint, else None."""
    if metered_endpoint(endpoint) is None:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    model = document.get("model")
    return usage_from_mapping(usage, model if isinstance(model, str) else None, body)


def usage_from_mapping(
    usage: Mapping[str, Any], model: str | None, raw: bytes | None = None
) -> Usage:
    """Build a `Usage` from a provider's `usage` object, in either API shape.

    `raw` is the JSON text the object was parsed from, read for the exact digits of a
    reported cost.
    """
    if "prompt_tokens" in usage or "input_tokens" not in usage:
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        input_details = usage.get("prompt_tokens_details")
        output_details = usage.get("completion_tokens_details")
    else:
        prompt = _count(usage.get("input_tokens"))
        completion = _count(usage.get("output_tokens"))
        input_details = usage.get("input_tokens_details")
        output_details = usage.get("output_tokens_details")
    total = usage.get("total_tokens")
    cost = usage.get("cost")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=_detail(input_details, "cached_tokens"),
        reasoning_tokens=_detail(output_details, "reasoning_tokens"),
        total_tokens=total if _is_count(total) else prompt + completion,
        model=model,
        provider_cost=None if cost is None else provider_cost(cost, raw),
    )


def provider_cost(value: object, raw: bytes | None = None) -> Decimal | None:
    """A reported USD cost as an exact Decimal; None when negative, huge or not a number."""
    if type(value) is int:
        return Decimal(value) if 0 <= value < MAX_PROVIDER_COST else None
    # NaN and infinities fail the range check too.
    if type(value) is not float or not (0 <= value < MAX_PROVIDER_COST):
        return None
    if raw is not None and (text := _cost_text(raw, value)) is not None:
        return Decimal(text)
    return Decimal(repr(value))


def _cost_text(raw: bytes, value: float) -> str | None:
    """The JSON text of the `"cost"` number in `raw` that parses to `value`, if found.

    Usage comes last in a response, so the search runs backwards from the end.
    """
    end = len(raw)
    for _ in range(_COST_LOOKS):
        at = raw.rfind(_COST_KEY, 0, end)
        if at < 0:
            return None
        match = _COST_NUMBER.match(raw, at + len(_COST_KEY))
        if match is not None:
            text = match.group(1).decode("ascii")
            if float(text) == value:
                return text
        end = at
    return None


def _is_count(value: object) -> TypeGuard[int]:
    # `bool` is a subclass of `int`: `type(...) is int` keeps `true` from counting as 1.
    return type(value) is int and 0 <= value <= MAX_TOKENS


def _count(value: object) -> int:
    return value if _is_count(value) else 0


def _detail(details: object, key: str) -> int:
    return _count(details.get(key)) if isinstance(details, dict) else 0
