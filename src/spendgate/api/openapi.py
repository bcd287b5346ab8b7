"""What `/openapi.json` says about answers: the documented error statuses and JSON bodies.

Every error the API answers is OpenAI-shaped (`ErrorBody`); each router documents the
statuses it can give (`errors(...)`) on top of those any request can get (`COMMON`). FastAPI
would document a 422 for every route with parameters, but the gateway answers 400 for an
invalid request; `describe` drops that 422 from the spec.
"""

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None


class ErrorBody(BaseModel):
    """The OpenAI-shaped error every failure answers."""

    error: ErrorDetail


_MEANINGS = {
    400: "Invalid request: a parameter or the body is malformed or out of range.",
    401: "Credentials missing or wrong.",
    402: "Out of budget or credit.",
    403: "Not allowed for this caller.",
    404: "No such object (or the feature is off).",
    408: "The request took too long to arrive.",
    409: "Conflicts with an existing object.",
    413: "The body is too large.",
    429: "Rate limited (or too many failed sign-ins from this address); see Retry-After.",
    431: "The request's headers are too large.",
    503: "The database (or Redis) is unavailable; try again shortly.",
}
# Any request can get these: a bad Content-Length (400), a slow or oversized request
# (408, 413, 431), an address blocked for failed sign-ins (429), the database down (503).
COMMON = (400, 408, 413, 429, 431, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` documenting `statuses` and the common ones, each an `ErrorBody`."""
    return {
        status: {"model": ErrorBody, "description": _MEANINGS[status]}
        for status in sorted({*COMMON, *statuses})
    }


def describe(api: FastAPI) -> None:
    """Have `api` serve its spec without FastAPI's 422 and with JSON bodies typed as JSON."""

    build = api.openapi  # FastAPI's own: builds the spec once and keeps it

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        spec = build()
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                _fix_responses(operation.get("responses", {}))
        schemas = spec.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return spec

    api.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point


def _fix_responses(responses: dict[str, Any]) -> None:
    responses.pop("422", None)  # never answered: invalid requests get a 400 `ErrorBody`
    for response in responses.values():
        media = response.get("content", {}).get("application/json")
        # `ExactJSONResponse` is no `JSONResponse` subclass, so FastAPI calls its body a
        # string; it is JSON, of any shape unless the route documents one.
        if media is not None and media.get("schema") == {"type": "string"}:
            media["schema"] = {}
