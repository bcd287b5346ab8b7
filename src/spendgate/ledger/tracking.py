"""Tracking tokens in the ledger database: the credentials of client-push ingestion.

A token is stored only as its hash (like a gateway key) and shown once, when created. It
may name the user its pushed usage belongs to.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, Select, delete, exc, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.errors import Conflict, NotFound
from spendgate.ledger.schema import TrackingToken, User


@dataclass(frozen=True, slots=True)
class TrackingTokenRecord:
    """A tracking token as stored (never the token); `user` is its user's name, if any."""

    id: int
    name: str
    user: str | None
    display: str
    active: bool
    created_at: datetime


class TrackingTokenStore:
    """Async access to the tracking_tokens table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, name: str, user: str | None, token_hash: str, display: str
    ) -> TrackingTokenRecord:
        """Store a new, active token (by hash); `user` must exist (`Store.ensure_user`).

        `NotFound` for an unknown user, `Conflict` if the hash is already stored.
        """
        try:
            async with self._engine.begin() as conn:
                user_id = None
                if user is not None:
                    user_id = await conn.scalar(select(User.id).where(User.name == user))
                    if user_id is None:
                        raise NotFound(f"No user named {user!r}.")
                await conn.execute(
                    insert(TrackingToken).values(
                        name=name, user_id=user_id, token_hash=token_hash, display=display
                    )
                )
                row = await _token_row(conn, TrackingToken.token_hash == token_hash)
        except exc.IntegrityError as error:
            raise Conflict("a tracking token with this hash already exists") from error
        assert row is not None
        return _record(row)

    async def list(self) -> list[TrackingTokenRecord]:
        """Every token, newest first."""
        async with self._engine.connect() as conn:
            query = _token_select().order_by(TrackingToken.id.desc())
            rows = (await conn.execute(query)).mappings().all()
        return [_record(row) for row in rows]

    async def get(self, token_id: int) -> TrackingTokenRecord | None:
        """The token with id `token_id`, or None."""
        async with self._engine.connect() as conn:
            row = await _token_row(conn, TrackingToken.id == token_id)
        return None if row is None else _record(row)

    async def set_active(self, token_id: int, active: bool) -> TrackingTokenRecord | None:
        """Turn a token on or off; None if there is no such token."""
        return await self.update(token_id, active=active)

    async def update(
        self, token_id: int, *, active: bool | None = None, name: str | None = None
    ) -> TrackingTokenRecord | None:
        """Change a token's active flag and/or name (None: unchanged); None if no such token."""
        values: dict[str, Any] = {}
        if active is not None:
            values["active"] = active
        if name is not None:
            values["name"] = name
        async with self._engine.begin() as conn:
            if values:
                await conn.execute(
                    update(TrackingToken).where(TrackingToken.id == token_id).values(values)
                )
            row = await _token_row(conn, TrackingToken.id == token_id)
        return None if row is None else _record(row)

    async def delete(self, token_id: int) -> bool:
        """Delete a token; whether there was one."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(TrackingToken).where(TrackingToken.id == token_id))
        return bool(result.rowcount)

    async def find_by_hash(self, token_hash: str) -> TrackingTokenRecord | None:
        """The token with this hash (active or not), or None."""
        async with self._engine.connect() as conn:
            row = await _token_row(conn, TrackingToken.token_hash == token_hash)
        return None if row is None else _record(row)


def _token_select() -> Select[int, str, str, bool, datetime, str]:
    # An outer join: a token need not have a user.
    return select(
        TrackingToken.id,
        TrackingToken.name,
        TrackingToken.display,
        TrackingToken.active,
        TrackingToken.created_at,
        User.name.label("user_name"),
    ).outerjoin(User, TrackingToken.user_id == User.id)


async def _token_row(conn: AsyncConnection, condition: Any) -> RowMapping | None:
    return (await conn.execute(_token_select().where(condition))).mappings().first()


def _record(row: RowMapping) -> TrackingTokenRecord:
    return TrackingTokenRecord(
        id=row["id"],
        name=row["name"],
        user=row["user_name"],
        display=row["display"],
        active=bool(row["active"]),
        created_at=row["created_at"],
    )
