"""Running the gateway under an ASGI server (uvicorn with uvloop and httptools)."""

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

import uvicorn

from spendgate.app import SpendgateApp
from spendgate.server_transport import CoalescingHttpToolsProtocol

_GC_YOUNG_THRESHOLD = 20_000  # CPython's default is 700


def uvicorn_config(app: SpendgateApp, host: str, port: int) -> uvicorn.Config:
    """The server settings: fast event loop and parser, no access log on the hot path."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
        server_header=False,
        proxy_headers=False,  # the client address is never used: skip the middleware layer
        date_header=True,
    )


def settle_heap() -> None:
    """Once started: move every long-lived object out of the garbage collector's sight.

    After start-up the heap holds ~150,000 objects that live as long as the process (price
    data, SQLAlchemy metadata, the app). Frozen, later collections no longer walk them, and a
    larger first-generation threshold lets short-lived request objects die by reference
    count before a collection runs. Measured in-process: a third less time in the collector.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve_app(
    app: SpendgateApp,
    host: str,
    port: int,
    on_started: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM: in-flight streams finish, then the lifespan drains the queue."""
    server = uvicorn.Server(uvicorn_config(app, host, port))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.05)
    settle_heap()
    if on_started is not None:
        await on_started()
    await task


def configure_logging(log_path: str | None) -> None:
    """Log to stderr and, if configured, to a file."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_path:
        handlers.append(logging.FileHandler(log_path))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers, force=True,
    )  # fmt: skip
    logging.getLogger("alembic").setLevel(logging.WARNING)
