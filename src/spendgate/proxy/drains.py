"""Background drains: reading abandoned streams to their usage, a bounded number at a time."""

import asyncio
from collections.abc import Coroutine
from typing import Any


class DrainPool:
    """Runs drain coroutines in the background, at most `limit` at once."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        """Drains running now."""
        return len(self._tasks)

    def try_start(self, drain: Coroutine[Any, Any, None]) -> bool:
        """Start `drain` if under the bound; otherwise close it unstarted and return False."""
        if len(self._tasks) >= self._limit:
            drain.close()
            return False
        task = asyncio.create_task(drain, name="spendgate-stream-drain")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def wait(self) -> None:
        """Wait for every running drain to finish (shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
