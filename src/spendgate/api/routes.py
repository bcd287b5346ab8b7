"""The route table: every non-proxy router, and one renderer for every error."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from spendgate import __version__
from spendgate.api import (
    admin_keys,
    admin_tracking,
    admin_usage,
    admin_users,
    ingest,
    me,
    ops,
    public,
)
from spendgate.api.openapi import describe, errors
from spendgate.errors import (
    DatabaseUnavailable,
    FrameworkHTTPError,
    GatewayError,
    InvalidRequest,
    NotFound,
    RequestTooLarge,
)
from spendgate.runtime import Runtime
from spendgate.web import console
from spendgate.web.render import console_error_page

log = logging.getLogger(__name__)


def _render(request: Request, error: GatewayError) -> Response:
    """The OpenAI-shaped JSON error; under /ui/, the console's HTML error page instead."""
    page = console_error_page(request, error.status, error.message, error.headers)
    if page is not None:
        return page
    headers = {name.decode(): value.decode() for name, value in error.headers}
    return Response(error.body(), status_code=error.status, media_type="application/json",
                    headers=headers)  # fmt: skip


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    if exc.status == 401:  # a wrong or missing key or token: counted against the address
        request.app.state.runtime.auth_throttle.failed(request.scope)
    return _render(request, exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return _render(request, InvalidRequest(message, param=param))


async def _database_error(request: Request, exc: Exception) -> Response:
    """The database failed (down, timed out, locked): a 503 the client can retry."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    # The driver's message only: never the SQL, its parameters or a connection URL.
    log.warning("%s %s: database error %s", request.method, request.url.path, type(cause).__name__)
    return _render(
        request, DatabaseUnavailable("The gateway's database is unavailable. Try again shortly.")
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _render(request, NotFound("Not found."))
    if exc.status_code == 413:  # a body past the limit (app.py counts chunked ones)
        return _render(request, RequestTooLarge(str(exc.detail)))
    # Starlette's own errors (405 with its Allow header, ...): keep status and headers.
    headers = [(name.encode(), value.encode()) for name, value in (exc.headers or {}).items()]
    error = FrameworkHTTPError(exc.status_code, str(exc.detail), headers=headers)
    return _render(request, error)


def build_api(runtime: Runtime) -> FastAPI:
    """The FastAPI app for admin, self and operations routes."""
    api = FastAPI(
        title="spendgate",
        version=__version__,
        description="Admin, self-service and operations API of the spendgate LLM gateway. "
        "The OpenAI-compatible proxy lives under /v1/ and is not described here.",
        # Its redirect would build the Location from the client's own Host header.
        redirect_slashes=False,
    )
    api.state.runtime = runtime
    api.add_exception_handler(GatewayError, _gateway_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(DBAPIError, _database_error)
    api.add_exception_handler(ConnectionError, _database_error)
    for module, statuses in (
        (admin_users, (401, 404, 409)),
        (admin_keys, (401, 404, 409)),
        (admin_tracking, (401, 404, 409)),
        (admin_usage, (401, 404)),
        (ingest, (401, 403, 404)),
        (me, (401,)),
        (public, (403, 404, 409)),
    ):
        api.include_router(module.router, responses=errors(*statuses))
    api.include_router(ops.router)  # documents per route: /health's 503 is its own body
    console.install(api)
    describe(api)
    return api
