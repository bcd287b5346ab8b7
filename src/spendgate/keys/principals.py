"""The principal cache: key hash → (key, user), so the steady state reads no database.

Invalidation has two paths. Changes made through this process (admin API revoke, PATCH)
call `changed()`, which drops the cache at once and, with Redis, tells every other instance
through pub/sub (`keys/broadcast.py`). Every change, wherever made (the CLI, another
instance), also bumps `meta.principal_generation` in the same transaction; a background
task reads that one integer every `refresh_seconds` and drops the cache when it moved, so a
revoke anywhere is effective here within that interval even without Redis. Unknown keys
are remembered briefly too, so a flood of bad keys cannot turn into a flood of database
reads.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from spendgate.errors import DatabaseUnavailable, InvalidAPIKey
from spendgate.keys.material import hash_key
from spendgate.ledger.records import KeyRecord, UserRecord
from spendgate.ledger.store import Store
from spendgate.tasks import cancel_and_wait

_MAX_ENTRIES = 100_000
_MAX_MISSES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key used and the user it belongs to."""

    key: KeyRecord
    user: UserRecord


class PrincipalCache:
    """Resolves gateway keys to principals, caching in process."""

    def __init__(
        self,
        store: Store,
        *,
        refresh_seconds: float = 0.5,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        announce: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._announce = announce
        self._refresh_seconds = refresh_seconds
        self._timeout = timeout
        self._clock = clock
        self._entries: dict[str, Principal] = {}
        self._misses: dict[str, float] = {}
        self._generation = -1
        self.lookup_errors = 0  # database reads of keys that failed (for metrics)
        self.refresh_errors = 0
        self._task: asyncio.Task[None] | None = None
        self._lookups: dict[str, asyncio.Future[tuple[KeyRecord, UserRecord] | None]] = {}

    async def authenticate(self, key: str | None) -> Principal:
        """The principal for `key`, or `InvalidAPIKey` if missing, unknown, revoked or expired."""
        if not key:
            raise InvalidAPIKey("Missing API key. Send it as 'Authorization: Bearer sg-…'.")
        digest = hash_key(key)
        principal = self._entries.get(digest)
        if principal is None:
            principal = await self._load(digest)
        check_usable(principal)
        return principal

    async def _load(self, digest: str) -> Principal:
        missed_at = self._misses.get(digest)
        if missed_at is not None and self._clock() - missed_at < self._refresh_seconds:
            raise InvalidAPIKey("Invalid API key.")
        # One database read per key however many requests bring it at once (a new key
        # under load, or every key after an invalidation).
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._find(digest))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda done: self._looked_up(digest, done))
        try:
            found = await asyncio.shield(lookup)
        except Exception as exc:
            raise DatabaseUnavailable(
                "The gateway cannot read its database to check this key. Try again shortly."
            ) from exc
        if found is None:
            if len(self._misses) >= _MAX_MISSES:
                self._misses.clear()
            self._misses[digest] = self._clock()
            raise InvalidAPIKey("Invalid API key.")
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        principal = Principal(key=found[0], user=found[1])
        self._entries[digest] = principal
        return principal

    async def _find(self, digest: str) -> tuple[KeyRecord, UserRecord] | None:
        # Bounded: a database that hangs (no reset, no answer) must not hold requests, nor
        # this look-up, which every request bringing the key would otherwise wait on.
        async with asyncio.timeout(self._timeout):
            return await self._store.find_key_by_hash(digest)

    def _looked_up(self, digest: str, done: "asyncio.Future[Any]") -> None:
        self._lookups.pop(digest, None)
        if not done.cancelled() and done.exception() is not None:
            # counted here; the callers waiting re-raise it themselves
            self.lookup_errors += 1

    def invalidate(self) -> None:
        """Forget every cached principal here."""
        self._entries.clear()
        self._misses.clear()

    async def changed(self) -> None:
        """After a change to users or keys: forget them here and tell the other instances.

        The generation the change moved is read first, so the watcher does not drop the
        cache a second time at its next tick: a database outage just after a change would
        otherwise leave every key unreadable, not only the changed ones. (Read before
        dropping: a principal cached after the drop is at least that recent.)
        """
        try:
            async with asyncio.timeout(self._timeout):
                self._generation = await self._store.read_generation()
        except Exception:  # as the watcher: it will drop the cache again at its next tick
            self.refresh_errors += 1
        self.invalidate()
        if self._announce is not None:
            await self._announce()

    async def start(self) -> None:
        """Read the current generation and start watching it."""
        self._generation = await self._store.read_generation()
        self._task = asyncio.create_task(self._watch(), name="spendgate-principal-refresh")

    async def stop(self) -> None:
        """Stop watching."""
        await cancel_and_wait(self._task)
        self._task = None

    async def refresh(self) -> None:
        """Drop the cache if another process changed users or keys."""
        async with asyncio.timeout(self._timeout):
            generation = await self._store.read_generation()
        if generation != self._generation:
            self._generation = generation
            self.invalidate()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            # A database hiccup must not kill the watcher; the next tick retries.
            try:
                await self.refresh()
            except Exception:
                self.refresh_errors += 1


def check_usable(principal: Principal) -> None:
    """Refuse a revoked or expired key, or a disabled user."""
    key = principal.key
    if key.revoked_at is not None:
        raise InvalidAPIKey("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
        raise InvalidAPIKey("This API key has expired.")
    if principal.user.disabled:
        raise InvalidAPIKey("The user of this API key is disabled.")
