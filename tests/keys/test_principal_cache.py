"""The principal cache reads each key from the database once, however many ask at once."""

import asyncio
from pathlib import Path

from spendgate.keys.material import display_key, hash_key, new_key
from spendgate.keys.principals import PrincipalCache
from spendgate.ledger.engine import create_engine, sqlite_url_for_path, upgrade
from spendgate.ledger.store import Store


class CountingStore(Store):
    """A real store that counts its key lookups."""

    lookups = 0

    async def find_key_by_hash(self, key_hash: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        await asyncio.sleep(0)  # let the other requests arrive while this one reads
        return await super().find_key_by_hash(key_hash)


async def test_concurrent_first_requests_with_a_key_read_it_once(tmp_path: Path) -> None:
    engine = create_engine(sqlite_url_for_path(str(tmp_path / "ledger.db")))
    try:
        await upgrade(engine)
        store = CountingStore(engine)
        key = new_key()
        await store.create_key("ann", hash_key(key), display_key(key))
        cache = PrincipalCache(store)
        principals = await asyncio.gather(*(cache.authenticate(key) for _ in range(50)))
        assert {principal.user.name for principal in principals} == {"ann"}
        assert store.lookups == 1
        cache.invalidate()
        await asyncio.gather(*(cache.authenticate(key) for _ in range(50)))
        assert store.lookups == 2
    finally:
        await engine.dispose()


async def test_a_change_made_here_is_not_dropped_again_by_the_generation_watcher(
    tmp_path: Path,
) -> None:
    """`changed()` keeps up with the generation its change moved: the watcher's next tick
    leaves the cache alone (were it dropped, a database outage just after an admin change
    would make every key unreadable); a change made elsewhere still drops it."""
    engine = create_engine(sqlite_url_for_path(str(tmp_path / "ledger.db")))
    try:
        await upgrade(engine)
        store = CountingStore(engine)
        cache = PrincipalCache(store)
        await cache.start()
        key = new_key()
        await store.create_key("ann", hash_key(key), display_key(key))  # made here
        await cache.changed()
        await cache.authenticate(key)
        await cache.refresh()  # the watcher's tick
        await cache.authenticate(key)
        assert store.lookups == 1
        await store.create_key("bob", hash_key(new_key()), "sg-b…b")  # made by another process
        await cache.refresh()
        await cache.authenticate(key)
        assert store.lookups == 2
        await cache.stop()
    finally:
        await engine.dispose()
