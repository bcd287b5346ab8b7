"""Push the usage of a provider call made without the gateway to its `/ingest` endpoint.

    from spendgate.client import track
    response = openai_client.chat.completions.create(...)
    track(response, tracking_token="sgt-...", ingest_url="https://gw/ingest", ingest_key="...")

`track` reads the `usage` of an `openai` SDK response (chat completions, completions,
embeddings, the Responses API) and posts one event with the standard library only. It never
raises into the caller and never logs a key: it returns whether the gateway accepted the event.
"""

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


def _field(value: Any, name: str) -> Any:
    """`value.name` for SDK objects, `value[name]` for plain dicts; None when absent."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _count(value: Any, *names: str) -> int:
    """The first of `names` present on `value` as an int, else 0."""
    for name in names:
        found = _field(value, name)
        if isinstance(found, int) and not isinstance(found, bool):
            return found
    return 0


def usage_event(
    response: Any,
    *,
    tracking_token: str,
    request_id: str | None = None,
    end_user: str | None = None,
) -> dict[str, Any]:
    """The `/ingest` event for an SDK response; ValueError if it carries no usage or model."""
    usage = _field(response, "usage")
    model = _field(response, "model")
    if usage is None or not isinstance(model, str) or not model:
        raise ValueError("the response carries no usage or no model")
    prompt = _count(usage, "prompt_tokens", "input_tokens")
    completion = _count(usage, "completion_tokens", "output_tokens")
    prompt_details = _field(usage, "prompt_tokens_details") or _field(usage, "input_tokens_details")
    completion_details = _field(usage, "completion_tokens_details") or _field(
        usage, "output_tokens_details"
    )
    event: dict[str, Any] = {
        "tracking_token": tracking_token,
        "model": model,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": min(_count(prompt_details, "cached_tokens"), prompt),
        "reasoning_tokens": min(_count(completion_details, "reasoning_tokens"), completion),
    }
    if request_id is None:
        response_id = _field(response, "id")
        request_id = response_id if isinstance(response_id, str) and response_id else None
    if request_id is not None:
        event["request_id"] = request_id
    if end_user is not None:
        event["end_user"] = end_user
    return event


def track(
    response: Any,
    *,
    tracking_token: str,
    ingest_url: str,
    ingest_key: str,
    request_id: str | None = None,
    end_user: str | None = None,
    timeout: float = 5.0,
) -> bool:
    """Post the usage of `response` to the gateway; True if it was recorded (or a repeat)."""
    try:
        event = usage_event(
            response, tracking_token=tracking_token, request_id=request_id, end_user=end_user
        )
        if not ingest_url.startswith(("http://", "https://")):
            raise ValueError("ingest_url must be an http(s) URL")
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
            ingest_url,
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json", "X-Ingest-Key": ingest_key},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            return 200 <= int(answer.status) < 300
    except urllib.error.HTTPError as error:
        logger.warning("spendgate ingest refused the event: HTTP %d %s", error.code, _reason(error))
    except Exception as error:  # the caller's own call succeeded: tracking must not fail it
        logger.warning("spendgate ingest failed: %s", type(error).__name__)
    return False


async def atrack(
    response: Any,
    *,
    tracking_token: str,
    ingest_url: str,
    ingest_key: str,
    request_id: str | None = None,
    end_user: str | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109 (the HTTP post's timeout, applied in the thread)
) -> bool:
    """`track` for async code: the post runs in a worker thread."""
    return await asyncio.to_thread(
        track,
        response,
        tracking_token=tracking_token,
        ingest_url=ingest_url,
        ingest_key=ingest_key,
        request_id=request_id,
        end_user=end_user,
        timeout=timeout,
    )


def _reason(error: urllib.error.HTTPError) -> str:
    """The gateway's error message (it never echoes the keys), shortened."""
    try:
        body = json.loads(error.read(4096))
        message = body["error"]["message"]
    except Exception:
        return ""
    return str(message)[:200]
