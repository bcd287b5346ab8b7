"""Key-cache invalidation across instances through Redis pub/sub.

When this instance changes a user or key (revoke, PATCH, new budget), it publishes on one
channel; every instance, this one included, drops its principal cache when a message
arrives. The database generation poll (`PrincipalCache`) stays as the safety net for
changes made where no Redis is (the CLI) and for messages lost while disconnected: after
every (re)subscription the cache is dropped too, since a message may have been missed.
"""

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis

from spendgate.tasks import cancel_and_wait

log = logging.getLogger("spendgate")

_RECONNECT_SECONDS = 1.0
_POLL_SECONDS = 1.0


class KeyChanges:
    """Publishes and listens for "users or keys changed" on a Redis channel."""

    def __init__(self, client: "Redis", channel: str, on_change: Callable[[], None]) -> None:
        self._client = client
        self._channel = channel
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def publish(self) -> None:
        """Tell every instance; a failure is logged (the generation poll still catches it)."""
        try:
            await self._client.publish(self._channel, b"changed")
        except Exception as exc:  # never fail the admin change that was already committed
            log.warning("could not announce a key change on Redis: %s", type(exc).__name__)

    async def start(self) -> None:
        """Start listening in the background."""
        self._task = asyncio.create_task(self._listen(), name="spendgate-key-changes")

    async def stop(self) -> None:
        """Stop listening."""
        await cancel_and_wait(self._task)
        self._task = None

    async def _listen(self) -> None:
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._on_change()  # anything missed while not subscribed
                    self.subscribed.set()
                    while True:
                        message = await pubsub.get_message(timeout=_POLL_SECONDS)
                        if message is not None and message["type"] == "message":
                            self._on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection dropped: resubscribe after a pause
                self.subscribed.clear()
                log.warning("key-change channel lost (%s); resubscribing", type(exc).__name__)
                await asyncio.sleep(_RECONNECT_SECONDS)
