"""The request log: one JSON line per recorded request, written in batches off the loop.

`add` only appends the event to a list (the hot path pays nothing more); a task turns the
list into JSON lines every `interval` and hands them to the `spendgate.requests` logger in a
worker thread, so a slow stderr pipe or disk never stalls the event loop. A line holds who,
what and how much — never a key (only its display form), a prompt or a completion.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from spendgate.ledger.events import UsageEvent
from spendgate.logs import REQUEST_LOGGER
from spendgate.tasks import cancel_and_wait

_PICO = 10**12
_STOP_SECONDS = 5.0


def log_line(event: UsageEvent) -> dict[str, Any]:
    """The fields of one request's log line."""
    cost = event.cost_pico
    return {
        "time": event.timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": "info",
        "event": "request",
        "request_id": event.request_id,
        "user": event.user,
        "key": event.key_display,
        "model": event.model,
        "requested_model": event.requested_model,
        "endpoint": event.endpoint,
        "method": event.method,
        "status": event.status,
        "stream": event.stream,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "cached_tokens": event.cached_tokens,
        "reasoning_tokens": event.reasoning_tokens,
        "total_tokens": event.total_tokens,
        "cost_usd": None if cost is None else cost / _PICO,
        "latency_ms": event.latency_ms,
        "estimated": event.estimated,
        "source": event.source,
        "upstream": event.upstream,
        "end_user": event.end_user,
        "error_code": event.error_code,
    }


class RequestLog:
    """Collects recorded events and writes their log lines in batches."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval: float = 0.2,
        max_pending: int = 100_000,
    ) -> None:
        self._logger = logger or logging.getLogger(REQUEST_LOGGER)
        self._interval = interval
        self._max_pending = max_pending
        self._pending: list[UsageEvent] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # lines not written because too many were waiting

    def add(self, event: UsageEvent) -> None:
        """Queue the event's line (nothing when INFO is off for the request logger)."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append(event)

    async def start(self) -> None:
        """Start writing on the running loop."""
        self._task = asyncio.create_task(self._run(), name="spendgate-request-log")

    async def stop(self) -> None:
        """Write what is waiting and end the task (giving up after a few seconds if the
        log's reader has stopped reading, so shutdown cannot hang on a full pipe)."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            async with asyncio.timeout(_STOP_SECONDS):
                await self._write()
        except TimeoutError:
            pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._write()

    async def _write(self) -> None:
        if self._pending:
            events, self._pending = self._pending, []
            await asyncio.to_thread(self._emit, events)

    def _emit(self, events: Sequence[UsageEvent]) -> None:
        text = b"\n".join(orjson.dumps(log_line(event)) for event in events).decode()
        self._logger.info(text)
