"""Tracking tokens in the ledger: the store and the 0004 migration, on every backend."""

import hashlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.errors import Conflict, NotFound
from spendgate.keys.material import display_key, hash_key, new_tracking_token
from spendgate.ledger.engine import SCHEMA_HEAD, alembic_config, create_engine, upgrade
from spendgate.ledger.schema import Base
from spendgate.ledger.store import Store
from spendgate.ledger.tracking import TrackingTokenStore


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def test_tokens_are_created_listed_toggled_renamed_and_deleted(
    backend: str, engine: AsyncEngine
) -> None:
    await Store(engine).create_user("alice")
    tokens = TrackingTokenStore(engine)
    first = await tokens.create("ci", "alice", token_hash("one"), "sgt-aaaa…zzzz")
    second = await tokens.create("laptop", None, token_hash("two"), "sgt-bbbb…yyyy")
    assert (first.name, first.user, first.display, first.active) == (
        "ci", "alice", "sgt-aaaa…zzzz", True
    )  # fmt: skip
    assert second.user is None and second.id != first.id
    assert first.created_at.tzinfo is not None
    assert await tokens.list() == [second, first]  # newest first
    assert await tokens.get(first.id) == first
    assert await tokens.find_by_hash(token_hash("two")) == second
    assert await tokens.find_by_hash(token_hash("three")) is None

    paused = await tokens.set_active(first.id, False)
    assert paused is not None and paused.active is False
    assert await tokens.find_by_hash(token_hash("one")) == paused  # found, inactive
    renamed = await tokens.update(first.id, name="ci-2", active=True)
    assert renamed is not None and (renamed.name, renamed.active) == ("ci-2", True)
    assert await tokens.update(first.id) == renamed  # nothing to change

    assert await tokens.delete(first.id) is True
    assert await tokens.delete(first.id) is False
    assert await tokens.get(first.id) is None
    assert await tokens.set_active(first.id, True) is None
    assert await tokens.list() == [second]


async def test_a_token_needs_an_existing_user_and_a_new_hash(
    backend: str, engine: AsyncEngine
) -> None:
    tokens = TrackingTokenStore(engine)
    with pytest.raises(NotFound):
        await tokens.create("ci", "ghost", token_hash("one"), "sgt-…")
    await tokens.create("ci", None, token_hash("one"), "sgt-…")
    with pytest.raises(Conflict):
        await tokens.create("again", None, token_hash("one"), "sgt-…")
    assert [token.name for token in await tokens.list()] == ["ci"]


def test_tracking_tokens_have_their_own_shape() -> None:
    token = new_tracking_token()
    assert token.startswith("sgt-") and len(token) == 4 + 43
    assert token != new_tracking_token()
    assert display_key(token) == f"sgt-{token[4:8]}…{token[-4:]}"
    assert hash_key(token) == hashlib.sha256(token.encode()).hexdigest()


def _upgrade_to(connection: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


def _downgrade_to(connection: Connection, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(connection), revision)


def _has_tracking_tokens(connection: Connection) -> bool:
    return inspect(connection).has_table("tracking_tokens")


def _schema_differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_the_migration_from_0003_adds_tracking_tokens_and_reverts(
    backend: str, database_url: str
) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0003")
            assert not await conn.run_sync(_has_tracking_tokens)
        await Store(engine).create_user("alice")  # a ledger in use before 0004
        await upgrade(engine)
        async with engine.connect() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            differences = await conn.run_sync(_schema_differences)
        assert version == SCHEMA_HEAD
        assert differences == []
        token = await TrackingTokenStore(engine).create("ci", "alice", token_hash("x"), "sgt-…")
        assert token.user == "alice" and token.active is True

        async with engine.begin() as conn:
            await conn.run_sync(_downgrade_to, "0003")
            assert not await conn.run_sync(_has_tracking_tokens)
        assert await Store(engine).get_user("alice") is not None
        await upgrade(engine)
        assert await TrackingTokenStore(engine).list() == []
    finally:
        await engine.dispose()
