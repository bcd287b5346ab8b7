"""The ASGI application: `/v1/*` to the plain-ASGI proxy, everything else to FastAPI."""

import logging
from typing import Any

from spendgate.api.routes import build_api
from spendgate.config import Settings
from spendgate.proxy.paths import is_proxy_path
from spendgate.proxy.relay import ProxyApp, Receive, Scope, Send
from spendgate.runtime import Runtime

log = logging.getLogger("spendgate")


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
            recorder=runtime.recorder,
            drains=runtime.drains,
            default_model=settings.default_model,
            max_body_bytes=settings.max_body_bytes,
            key_in_path=settings.key_in_path,
            drain_on_disconnect=settings.on_disconnect == "drain",
        )
        self.api = build_api(runtime)
        self._key_in_path = settings.key_in_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and is_proxy_path(scope["path"], self._key_in_path):
            await self.proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.api(scope, receive, send)

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


def create_app(settings: Settings) -> SpendgateApp:
    """Build the gateway for `settings` (no I/O until the lifespan starts)."""
    return SpendgateApp(settings)
