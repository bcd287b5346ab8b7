"""The ASGI application: `/v1/*` to the plain-ASGI proxy, everything else to FastAPI.

With SPENDGATE_CORS_ORIGINS set, Starlette's CORS middleware wraps both (browsers call the
proxy too); without, there is no middleware at all.
"""

import logging
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from spendgate.api.routes import build_api
from spendgate.config import Settings
from spendgate.errors import InvalidRequest, RateLimitExceeded, RequestTooLarge
from spendgate.proxy.paths import is_proxy_path
from spendgate.proxy.relay import Message, ProxyApp, Receive, Scope, Send, send_error
from spendgate.runtime import Runtime

log = logging.getLogger("spendgate")

_NEVER_THROTTLED = frozenset({"/health", "/metrics"})
CORS_METHODS = ("GET", "POST", "PATCH", "DELETE", "OPTIONS")
# What clients send: gateway keys (three ways), end users, admin and ingest credentials, and
# the headers OpenAI's own SDKs add to every request (a browser preflights all of them).
CORS_HEADERS = (
    "Authorization",
    "Content-Type",
    "api-key",
    "x-api-key",
    "X-User-ID",
    "X-Admin-Token",
    "X-Ingest-Key",
    "OpenAI-Beta",
    "OpenAI-Organization",
    "OpenAI-Project",
    "X-Stainless-Arch",
    "X-Stainless-Lang",
    "X-Stainless-OS",
    "X-Stainless-Package-Version",
    "X-Stainless-Retry-Count",
    "X-Stainless-Runtime",
    "X-Stainless-Runtime-Version",
    "X-Stainless-Read-Timeout",
    "X-Stainless-Timeout",
)
CORS_EXPOSED = (
    "x-spendgate-request-id",
    "x-spendgate-cost-usd",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


class SpendgateApp:
    """The whole gateway as one ASGI callable; it owns the lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime = Runtime(settings)
        runtime = self.runtime
        self.proxy = ProxyApp(
            principals=runtime.principals,
            admission=runtime.limits,
            upstream=runtime.upstream,
            router=runtime.router,
            models=runtime.models,
            max_attempts=settings.upstream_max_attempts,
            retry_backoff=settings.upstream_retry_backoff_ms / 1000,
            recorder=runtime.recorder,
            drains=runtime.drains,
            metrics=runtime.metrics,
            default_model=settings.default_model,
            max_body_bytes=settings.max_body_bytes,
            key_in_path=settings.key_in_path,
            drain_on_disconnect=settings.on_disconnect == "drain",
            stream_max_seconds=settings.stream_max_seconds,
            auth_throttle=runtime.auth_throttle,
        )
        self.api = build_api(runtime)
        self._key_in_path = settings.key_in_path
        self._throttle = runtime.auth_throttle
        self._max_body = settings.max_body_bytes
        # Without origins no middleware at all: the hot path pays nothing for CORS.
        self._entry: ASGIApp = (
            cors(self.route, settings.cors_origins) if settings.cors_origins else self.route
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send `/v1/*` to the proxy, the lifespan to the runtime, the rest to FastAPI."""
        kind = scope["type"]
        if self._throttle.blocking and kind == "http" and await self._refused(scope, send):
            return
        if kind == "http" and is_proxy_path(scope["path"], self._key_in_path):
            await self.proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            await self._serve_api(scope, receive, self._with_request_id(send))
        else:
            await self.api(scope, receive, send)

    async def _serve_api(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI, with the body bounded like the proxy's (the console's forms included)."""
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is None:  # chunked, or no body: counted as it arrives
            await self.api(scope, self._bounded(receive), send)
        elif not declared.isdigit():
            await send_error(send, InvalidRequest("Malformed Content-Length header."))
        elif int(declared) > self._max_body:
            await send_error(send, RequestTooLarge(f"Request body is over {self._max_body} bytes."))
        else:  # the server reads exactly the declared length
            await self.api(scope, receive, send)

    def _bounded(self, receive: Receive) -> Receive:
        """`receive` refusing a body past the limit (rendered as 413 `request_too_large`)."""
        limit = self._max_body
        seen = 0

        async def receive_bounded() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"Request body is over {limit} bytes.")
            return message

        return receive_bounded

    def _with_request_id(self, send: Send) -> Send:
        """`send` adding an `x-spendgate-request-id` to the response (the proxy adds its own)."""
        request_id = (b"x-spendgate-request-id", self.runtime.recorder.new_request_id().encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), request_id]}
            await send(message)

        return send_with_id

    async def _refused(self, scope: Scope, send: Send) -> bool:
        """Refuse a request from an address blocked for failed sign-ins (not /health, /metrics)."""
        if scope["path"] in _NEVER_THROTTLED:
            return False
        wait = self._throttle.retry_after(scope)
        if wait is None:
            return False
        retry = str(math.ceil(wait)).encode()
        error = RateLimitExceeded(
            "Too many failed authentication attempts from this address; "
            f"try again in {retry.decode()} s.",
            headers=[(b"retry-after", retry)],
        )
        await send_error(self._with_request_id(send), error)
        return True

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "lifespan.startup":
                try:
                    await self.runtime.start()
                except Exception as exc:  # the outermost edge: report and refuse to start
                    log.error("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def cors(app: ASGIApp, origins: list[str]) -> CORSMiddleware:
    """`app` answering browsers from `origins` (preflights included); never with credentials."""
    return CORSMiddleware(
        app,
        allow_origins=origins,
        allow_methods=CORS_METHODS,
        allow_headers=CORS_HEADERS,
        allow_credentials=False,
        expose_headers=CORS_EXPOSED,
    )


def create_app(settings: Settings) -> SpendgateApp:
    """Build the gateway for `settings` (no I/O until the lifespan starts)."""
    return SpendgateApp(settings)
