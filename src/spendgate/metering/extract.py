"""Read the `usage` a provider reports in a complete (non-streamed) JSON response.

Two shapes exist: chat/completions/embeddings report `prompt_tokens`/`completion_tokens`
(details under `prompt_tokens_details`/`completion_tokens_details`); the Responses API
reports `input_tokens`/`output_tokens` (details under `input_tokens_details`/
`output_tokens_details`). Both map onto the same `Usage`.
"""

from collections.abc import Mapping
from typing import Any

import orjson

from spendgate.metering.usage import Usage

METERED_ENDPOINTS = frozenset({"chat/completions", "completions", "embeddings", "responses"})


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
    return usage_from_mapping(usage, model if isinstance(model, str) else None)


def usage_from_mapping(usage: Mapping[str, Any], model: str | None) -> Usage:
    """Build a `Usage` from a provider's `usage` object, in either API shape."""
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
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=_detail(input_details, "cached_tokens"),
        reasoning_tokens=_detail(output_details, "reasoning_tokens"),
        total_tokens=total if type(total) is int and total >= 0 else prompt + completion,
        model=model,
    )


def _count(value: object) -> int:
    # `bool` is a subclass of `int`: `type(...) is int` keeps `true` from counting as 1.
    return value if type(value) is int and value >= 0 else 0


def _detail(details: object, key: str) -> int:
    return _count(details.get(key)) if isinstance(details, dict) else 0
