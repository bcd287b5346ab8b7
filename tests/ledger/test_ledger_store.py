"""Users, keys and the principal generation in the store, on every backend."""

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.errors import Conflict
from spendgate.ledger.store import Store


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def test_create_get_and_list_users(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    created = await store.create_user(
        "bob",
        email="bob@example.com",
        budget_usd=Decimal("12.345678901234"),
        budget_period="monthly",
        limits={"requests_per_minute": 60},
    )
    await store.create_user("alice")
    assert created.name == "bob"
    assert created.email == "bob@example.com"
    assert created.budget_usd == Decimal("12.345678901234")
    assert created.budget_period == "monthly"
    assert created.limits == {"requests_per_minute": 60}
    assert created.disabled is False
    assert created.created_at.tzinfo is not None
    assert await store.get_user("bob") == created
    assert await store.get_user("nobody") is None
    assert [user.name for user in await store.list_users()] == ["alice", "bob"]
    alice = await store.get_user("alice")
    assert alice is not None
    assert (alice.budget_usd, alice.budget_period, alice.limits) == (None, None, {})


async def test_duplicate_user_is_a_conflict(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.create_user("carol")
    with pytest.raises(Conflict):
        await store.create_user("carol")


async def test_user_names_are_case_sensitive(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.create_user("Dave")
    await store.create_user("dave")
    assert {user.name for user in await store.list_users()} == {"Dave", "dave"}


async def test_ensure_user_creates_once(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    first = await store.ensure_user("erin")
    assert await store.ensure_user("erin") == first
    assert len(await store.list_users()) == 1


async def test_update_user_fields(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.create_user("frank", budget_usd=Decimal("5"), budget_period="daily")
    updated = await store.update_user(
        "frank", email="f@example.com", budget_usd=Decimal("7.5"), disabled=True, limits={}
    )
    assert updated is not None
    assert (updated.email, updated.budget_usd, updated.disabled) == (
        "f@example.com",
        Decimal("7.5"),
        True,
    )
    cleared = await store.update_user("frank", budget_usd=None, budget_period=None)
    assert cleared is not None
    assert (cleared.budget_usd, cleared.budget_period) == (None, None)
    assert await store.update_user("nobody", disabled=True) is None
    with pytest.raises(TypeError, match="name"):
        await store.update_user("frank", name="renamed")


async def test_create_key_creates_its_user(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    key = await store.create_key(
        "grace",
        key_hash("sg-secret-1"),
        "sg-abcd…wxyz",
        note="laptop",
        expires_at=expires,
        models=["gpt-4o*", "o3"],
        budget_usd=Decimal("0.25"),
        budget_period="weekly",
        limits={"tokens_per_day": 100_000},
    )
    assert key.user == "grace"
    assert key.key_hash == key_hash("sg-secret-1")
    assert (key.display, key.note, key.expires_at) == ("sg-abcd…wxyz", "laptop", expires)
    assert key.models == ["gpt-4o*", "o3"]
    assert (key.budget_usd, key.budget_period) == (Decimal("0.25"), "weekly")
    assert key.limits == {"tokens_per_day": 100_000}
    assert key.revoked_at is None and key.last_used_at is None
    user = await store.get_user("grace")
    assert user is not None and key.user_id == user.id
    assert await store.get_key(key.id) == key
    assert await store.get_key(key.id + 1000) is None


async def test_list_keys_all_or_per_user(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    first = await store.create_key("heidi", key_hash("a"), "sg-a")
    second = await store.create_key("ivan", key_hash("b"), "sg-b")
    third = await store.create_key("heidi", key_hash("c"), "sg-c")
    assert [key.id for key in await store.list_keys()] == [first.id, second.id, third.id]
    assert [key.id for key in await store.list_keys("heidi")] == [first.id, third.id]
    assert await store.list_keys("nobody") == []


async def test_duplicate_key_hash_is_a_conflict(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.create_key("judy", key_hash("same"), "sg-1")
    with pytest.raises(Conflict):
        await store.create_key("judy", key_hash("same"), "sg-2")


async def test_find_key_by_hash_returns_key_and_owner(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.create_user("mallory", email="m@example.com", budget_usd=Decimal("1"))
    key = await store.create_key("mallory", key_hash("k"), "sg-k", budget_usd=Decimal("0.5"))
    found = await store.find_key_by_hash(key_hash("k"))
    assert found is not None
    found_key, owner = found
    assert found_key == key
    assert owner == await store.get_user("mallory")
    assert owner.budget_usd == Decimal("1") and found_key.budget_usd == Decimal("0.5")
    assert await store.find_key_by_hash(key_hash("unknown")) is None


async def test_revoke_key_is_idempotent(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    key = await store.create_key("niaj", key_hash("r"), "sg-r")
    revoked = await store.revoke_key(key.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert datetime.now(UTC) - revoked.revoked_at < timedelta(minutes=1)
    generation = await store.read_generation()
    again = await store.revoke_key(key.id)
    assert again is not None and again.revoked_at == revoked.revoked_at
    assert await store.read_generation() == generation
    assert await store.revoke_key(key.id + 1000) is None
    found = await store.find_key_by_hash(key_hash("r"))
    assert found is not None and found[0].revoked_at == revoked.revoked_at


async def test_update_key_fields(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    key = await store.create_key("olivia", key_hash("u"), "sg-u", models=["*"])
    expires = datetime(2031, 5, 6, tzinfo=UTC)
    updated = await store.update_key(
        key.id, note="ci", models=None, expires_at=expires, limits={"requests_per_day": 10}
    )
    assert updated is not None
    assert (updated.note, updated.models, updated.expires_at) == ("ci", None, expires)
    assert updated.limits == {"requests_per_day": 10}
    assert await store.update_key(key.id + 1000, note="x") is None
    with pytest.raises(TypeError, match="key_hash"):
        await store.update_key(key.id, key_hash="other")


async def test_every_principal_change_bumps_the_generation(
    backend: str, engine: AsyncEngine
) -> None:
    store = Store(engine)
    seen = [await store.read_generation()]

    async def moved() -> bool:
        seen.append(await store.read_generation())
        return seen[-1] > seen[-2]

    await store.create_user("peggy")
    assert await moved()
    await store.update_user("peggy", disabled=True)
    assert await moved()
    key = await store.create_key("peggy", key_hash("g"), "sg-g")
    assert await moved()
    await store.update_key(key.id, note="n")
    assert await moved()
    await store.revoke_key(key.id)
    assert await moved()
    await store.create_key("rupert", key_hash("h"), "sg-h")  # creates the user too
    assert await moved()
    await store.get_user("peggy")
    await store.list_keys()
    assert not await moved()
    with pytest.raises(Conflict):
        await store.create_user("peggy")
    assert not await moved()


async def test_ping(backend: str, engine: AsyncEngine) -> None:
    await Store(engine).ping()


async def test_concurrent_first_keys_of_a_new_user_both_succeed(
    backend: str, engine: AsyncEngine
) -> None:
    store = Store(engine)
    keys = await asyncio.gather(
        *(store.create_key("newbie", key_hash(f"c{n}"), f"sg-c{n}") for n in range(4))
    )
    users = await store.list_users()
    assert [user.name for user in users] == ["newbie"]
    assert {key.user_id for key in keys} == {users[0].id}


async def test_concurrent_creation_of_one_user_conflicts_once(
    backend: str, engine: AsyncEngine
) -> None:
    store = Store(engine)
    results = await asyncio.gather(
        *(store.create_user("twin") for _ in range(3)), return_exceptions=True
    )
    assert sum(isinstance(result, Conflict) for result in results) == 2
    assert [user.name for user in await store.list_users()] == ["twin"]
