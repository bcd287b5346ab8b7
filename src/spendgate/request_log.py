"""The request log: one JSON line per recorded request, written in batches off the loop.

`add` encodes the event's line (orjson, ~2 µs) and appends it to a list; a task hands the
lines gathered every `interval` to the `spendgate.requests` logger in a worker thread, so a
slow stderr pipe or disk never stalls the event loop. A line holds who,
what and how much — never a key (only its display form), a prompt or a completion.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from decimal import Decimal

import orjson

from spendgate.ledger.events import UsageEvent
from spendgate.logs import REQUEST_LOGGER
from spendgate.money import format_usd
from spendgate.tasks import cancel_and_wait

_STOP_SECONDS = 5.0
_LINES_PER_RECORD = 64  # ~40 KB a record: no buffer of a whole batch (MBs under load) per write
_HEAD = b'{"level":"info","event":"request",'


def _exact(value: object) -> str:
    """Decimals (the cost) as their exact text; orjson calls this for what it cannot encode."""
    if isinstance(value, Decimal):
        return format_usd(value)
    raise TypeError(type(value).__name__)


def log_line(event: UsageEvent) -> bytes:
    """The request's log line: the ledger row's fields as JSON (`cost_usd` as exact text)."""
    return _HEAD + orjson.dumps(event, default=_exact, option=orjson.OPT_UTC_Z)[1:]


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
        self._pending: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.dropped = 0  # lines not written because too many were waiting

    def add(self, event: UsageEvent) -> None:
        """Queue the event's line (nothing when INFO is off for the request logger)."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        # Encoded now (~2 µs): a list of bytes costs the garbage collector nothing.
        self._pending.append(log_line(event))

    async def start(self) -> None:
        """Start writing on the running loop."""
        self._task = asyncio.create_task(self._run(), name="spendgate-request-log")

    async def stop(self) -> None:
        """Write what is waiting and end the task (giving up after a few seconds if the
        log's reader has stopped reading, so shutdown cannot hang on a full pipe).

        The task is never cancelled in the middle of a write: it finishes the one under way,
        writes the last lines and ends.
        """
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            async with asyncio.timeout(_STOP_SECONDS):
                await asyncio.shield(task)
        except TimeoutError:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stop.wait()
            await self._write()

    async def _write(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            await asyncio.to_thread(self._emit, lines)

    def _emit(self, lines: Sequence[bytes]) -> None:
        for start in range(0, len(lines), _LINES_PER_RECORD):
            self._logger.info(b"\n".join(lines[start : start + _LINES_PER_RECORD]).decode())
