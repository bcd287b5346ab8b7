"""Background tasks: stopping one."""

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: "asyncio.Future[Any] | None") -> None:
    """Cancel `task` (None: nothing to do) and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
