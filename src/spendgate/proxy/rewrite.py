"""Reading and rewriting a request body: only where the gateway must.

The model, the stream flag, the max-token bound and the end user are read from JSON
bodies; the body is re-serialised only when the gateway has to change it (inject
`stream_options.include_usage`, or the default model). Other bodies pass through as bytes.
"""

from dataclasses import dataclass
from typing import Any

import orjson

from spendgate.errors import InvalidRequest

METERED_ENDPOINTS = frozenset({"chat/completions", "completions", "embeddings", "responses"})
_USAGE_STREAM_ENDPOINTS = frozenset({"chat/completions", "completions"})
_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(slots=True)  # not frozen: a frozen init costs twice as much, per request
class PreparedRequest:
    """A request as the gateway understood it, with the body to send upstream."""

    endpoint: str
    method: str
    body: bytes
    json: dict[str, Any] | None
    model: str | None
    stream: bool
    client_wants_usage: bool
    max_output_tokens: int | None
    end_user: str | None

    @property
    def metered(self) -> bool:
        """Whether the endpoint reports token usage."""
        return self.endpoint in METERED_ENDPOINTS


def prepare_request(
    endpoint: str,
    method: str,
    content_type: bytes | None,
    body: bytes,
    *,
    default_model: str | None,
    end_user_header: str | None,
) -> PreparedRequest:
    """Read what the gateway needs from the body and rewrite it if it must."""
    parsed = _parse_json(endpoint, content_type, body)
    if parsed is None:
        return PreparedRequest(
            endpoint, method, body, None, None, False, False, None, end_user_header
        )
    changed = False
    model = parsed.get("model")
    if not isinstance(model, str) or not model:
        model = None
        if default_model and endpoint in METERED_ENDPOINTS:
            parsed["model"] = model = default_model
            changed = True
    stream = parsed.get("stream") is True
    wants_usage = False
    if stream and endpoint in _USAGE_STREAM_ENDPOINTS:
        options = parsed.get("stream_options")
        if isinstance(options, dict):
            wants_usage = options.get("include_usage") is True
            if not wants_usage:
                parsed["stream_options"] = {**options, "include_usage": True}
                changed = True
        else:
            parsed["stream_options"] = {"include_usage": True}
            changed = True
    end_user = end_user_header
    if end_user is None:
        user_field = parsed.get("user")
        if isinstance(user_field, str) and user_field:
            end_user = user_field[:200]
    return PreparedRequest(
        endpoint=endpoint,
        method=method,
        body=dump_json(parsed) if changed else body,
        json=parsed,
        model=model,
        stream=stream,
        client_wants_usage=wants_usage,
        max_output_tokens=_max_output_tokens(parsed),
        end_user=end_user,
    )


def _parse_json(endpoint: str, content_type: bytes | None, body: bytes) -> dict[str, Any] | None:
    if not body:
        return None
    is_json = content_type is None or b"json" in content_type.lower()
    if not is_json:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        if endpoint in METERED_ENDPOINTS:
            raise InvalidRequest("Request body is not valid JSON.") from None
        return None
    if not isinstance(parsed, dict):
        if endpoint in METERED_ENDPOINTS:
            raise InvalidRequest("Request body must be a JSON object.")
        return None
    return parsed


def dump_json(parsed: dict[str, Any]) -> bytes:
    """The JSON of a request body the gateway rewrote (InvalidRequest if nested too deep)."""
    try:
        return orjson.dumps(parsed)
    except orjson.JSONEncodeError:
        # Parsing allows deeper nesting (1024) than writing (254): refuse, don't fail (500).
        raise InvalidRequest("Request body is nested too deeply.") from None


def _max_output_tokens(parsed: dict[str, Any]) -> int | None:
    for field in _MAX_TOKEN_FIELDS:
        value = parsed.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
