"""Users and keys in the ledger database.

Every change to a user or key moves `meta.principal_generation` forward in the same
transaction, so principal caches on every instance can tell they are stale.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import FromClause, RowMapping, Select, exc, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.errors import Conflict
from spendgate.ledger.records import CreditRecord, KeyRecord, UserRecord
from spendgate.ledger.schema import GENERATION, ApiKey, CreditTransaction, Meta, User, utc_now
from spendgate.money import pico_to_usd, usd_to_pico

MAX_PICO = 2**63 - 1  # money columns are signed 64-bit integers of picodollars
USER_FIELDS = frozenset({"email", "budget_usd", "budget_period", "limits", "disabled"})
KEY_FIELDS = frozenset({"note", "expires_at", "models", "budget_usd", "budget_period", "limits"})


@dataclass(frozen=True, slots=True)
class AccountDefaults:
    """Budget and limits given to new users and keys created without their own."""

    user_budget_usd: Decimal | None = None
    user_budget_period: str = "monthly"
    user_limits: dict[str, int] | None = None
    key_budget_usd: Decimal | None = None
    key_budget_period: str = "monthly"
    key_limits: dict[str, int] | None = None

    def fill(
        self,
        kind: str,
        budget_usd: Decimal | None,
        budget_period: str | None,
        limits: dict[str, int] | None,
    ) -> dict[str, Any]:
        """Budget, period and limits of a new `kind` ("user" or "key"), defaults where unset."""
        if kind == "user":
            budget, period, default_limits = (
                self.user_budget_usd, self.user_budget_period, self.user_limits
            )  # fmt: skip
        else:
            budget, period, default_limits = (
                self.key_budget_usd, self.key_budget_period, self.key_limits
            )  # fmt: skip
        if budget_usd is None and budget is not None:
            budget_usd, budget_period = budget, budget_period or period
        return {
            "budget_usd": budget_usd,
            "budget_period": budget_period,
            "limits": default_limits if limits is None else limits,
        }

    def user_values(self) -> dict[str, Any]:
        """Column values for a user created with nothing of its own."""
        return _column_values(self.fill("user", None, None, None))


class Store:
    """Async access to users, keys, credits and the principal generation counter."""

    def __init__(self, engine: AsyncEngine, defaults: AccountDefaults | None = None) -> None:
        self._engine = engine
        self._defaults = defaults or AccountDefaults()

    @property
    def engine(self) -> AsyncEngine:
        """The engine this store writes through (reports read through it too)."""
        return self._engine

    # users

    async def create_user(
        self,
        name: str,
        email: str | None = None,
        budget_usd: Decimal | None = None,
        budget_period: str | None = None,
        limits: dict[str, int] | None = None,
    ) -> UserRecord:
        """Create a user; `Conflict` if the name is taken. Unset budget and limits get defaults."""
        values = _column_values(
            {"email": email, **self._defaults.fill("user", budget_usd, budget_period, limits)}
        )
        try:
            async with self._engine.begin() as conn:
                if await _user_row(conn, name) is not None:
                    raise Conflict(f"user '{name}' already exists")
                await conn.execute(insert(User).values(name=name, **values))
                await _bump_generation(conn)
                row = await _user_row(conn, name)
        except exc.IntegrityError as error:  # lost a race with another creator
            raise Conflict(f"user '{name}' already exists") from error
        assert row is not None
        return _user_record(row)

    async def get_user(self, name: str) -> UserRecord | None:
        """The user called `name`, or None."""
        async with self._engine.connect() as conn:
            row = await _user_row(conn, name)
        return None if row is None else _user_record(row)

    async def ensure_user(self, name: str) -> UserRecord:
        """The user called `name`, created with no budget or limits if absent."""
        user = await self.get_user(name)
        if user is not None:
            return user
        try:
            return await self.create_user(name)
        except Conflict:
            user = await self.get_user(name)
            assert user is not None
            return user

    async def list_users(self) -> list[UserRecord]:
        """Every user, by name."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(User).order_by(User.name))).mappings().all()
        return [_user_record(row) for row in rows]

    async def update_user(self, name: str, **fields: Any) -> UserRecord | None:
        """Change a user's email, budget_usd, budget_period, limits or disabled; None if absent."""
        values = _column_values(_checked(fields, USER_FIELDS))
        async with self._engine.begin() as conn:
            if values:
                result = await conn.execute(update(User).where(User.name == name).values(values))
                if result.rowcount:
                    await _bump_generation(conn)
            row = await _user_row(conn, name)
        return None if row is None else _user_record(row)

    # credits

    async def add_credit(
        self, name: str, amount_usd: Decimal, *, note: str | None, actor: str
    ) -> UserRecord | None:
        """Add one credit transaction (negative: refund or correction); None if no such user.

        The transaction row and the user's running sum change in one database transaction.
        """
        amount = usd_to_pico(amount_usd)
        async with self._engine.begin() as conn:
            found = (
                await conn.execute(select(User.id, User.credit_pico).where(User.name == name))
            ).first()
            if found is None:
                return None
            user_id, credit = found
            if abs((credit or 0) + amount) > MAX_PICO:
                raise Conflict("the credit balance would leave the supported range (±9.2M USD)")
            await conn.execute(
                insert(CreditTransaction).values(
                    user_id=user_id, amount_pico=amount, note=note, actor=actor
                )
            )
            await conn.execute(
                update(User)
                .where(User.id == user_id)
                .values(credit_pico=func.coalesce(User.credit_pico, 0) + amount)
            )
            await _bump_generation(conn)
            row = await _user_row(conn, name)
        return None if row is None else _user_record(row)

    async def list_credits(self, name: str) -> list[CreditRecord]:
        """The user's credit transactions, oldest first."""
        query = (
            select(CreditTransaction)
            .join(User, CreditTransaction.user_id == User.id)
            .where(User.name == name)
            .order_by(CreditTransaction.id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            CreditRecord(
                id=row["id"],
                amount_usd=pico_to_usd(row["amount_pico"]),
                note=row["note"],
                actor=row["actor"],
                created_at=row["created_at"],
            )
            for row in rows
        ]

    # keys

    async def create_key(
        self,
        user_name: str,
        key_hash: str,
        display: str,
        note: str | None = None,
        expires_at: datetime | None = None,
        models: list[str] | None = None,
        budget_usd: Decimal | None = None,
        budget_period: str | None = None,
        limits: dict[str, int] | None = None,
    ) -> KeyRecord:
        """Store a new key (by hash) for `user_name`, creating the user if absent.

        A key created without a budget or limits gets the configured defaults, and a user
        created on the way gets the user defaults.
        """
        values = _column_values(
            {
                "note": note,
                "expires_at": expires_at,
                "models": models,
                **self._defaults.fill("key", budget_usd, budget_period, limits),
            }
        )
        # A second try covers losing the race to create the same new user elsewhere.
        for attempt in (1, 2):
            try:
                return await self._insert_key(user_name, key_hash, display, values)
            except exc.IntegrityError as error:
                if attempt == 2 or await self._key_hash_taken(key_hash):
                    raise Conflict("a key with this hash already exists") from error
        raise AssertionError("unreachable")

    async def _insert_key(
        self, user_name: str, key_hash: str, display: str, values: dict[str, Any]
    ) -> KeyRecord:
        async with self._engine.begin() as conn:
            user = await _user_row(conn, user_name)
            if user is None:
                await conn.execute(
                    insert(User).values(name=user_name, **self._defaults.user_values())
                )
                user = await _user_row(conn, user_name)
                assert user is not None
            await conn.execute(
                insert(ApiKey).values(
                    user_id=user["id"], key_hash=key_hash, display=display, **values
                )
            )
            await _bump_generation(conn)
            row = await _key_row(conn, ApiKey.key_hash == key_hash)
        assert row is not None
        return _key_record(row)

    async def _key_hash_taken(self, key_hash: str) -> bool:
        async with self._engine.connect() as conn:
            found = await conn.scalar(select(ApiKey.id).where(ApiKey.key_hash == key_hash))
        return found is not None

    async def list_keys(self, user: str | None = None) -> list[KeyRecord]:
        """Every key, or those of `user`, oldest first."""
        query = _key_select().order_by(ApiKey.id)
        if user is not None:
            query = query.where(User.name == user)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_key_record(row) for row in rows]

    async def get_key(self, key_id: int) -> KeyRecord | None:
        """The key with id `key_id`, or None."""
        async with self._engine.connect() as conn:
            row = await _key_row(conn, ApiKey.id == key_id)
        return None if row is None else _key_record(row)

    async def find_key_by_hash(self, key_hash: str) -> tuple[KeyRecord, UserRecord] | None:
        """The key with this hash and its owner, or None (revoked keys are returned too)."""
        query = select(ApiKey, User).join(User, ApiKey.user_id == User.id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query.where(ApiKey.key_hash == key_hash))).mappings().first()
        if row is None:
            return None
        # Both tables have columns of the same names: read each side by column object.
        user = _user_record(_columns_of(row, User.__table__))
        return _key_record(_columns_of(row, ApiKey.__table__), user.name), user

    async def revoke_key(self, key_id: int) -> KeyRecord | None:
        """Mark a key revoked now (a revoked key keeps its first revocation time)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            )
            if result.rowcount:
                await _bump_generation(conn)
            row = await _key_row(conn, ApiKey.id == key_id)
        return None if row is None else _key_record(row)

    async def update_key(self, key_id: int, **fields: Any) -> KeyRecord | None:
        """Change a key's note, expires_at, models, budget_usd, budget_period or limits."""
        values = _column_values(_checked(fields, KEY_FIELDS))
        async with self._engine.begin() as conn:
            if values:
                result = await conn.execute(
                    update(ApiKey).where(ApiKey.id == key_id).values(values)
                )
                if result.rowcount:
                    await _bump_generation(conn)
            row = await _key_row(conn, ApiKey.id == key_id)
        return None if row is None else _key_record(row)

    # housekeeping

    async def read_generation(self) -> int:
        """The current principal generation (0 before any change)."""
        async with self._engine.connect() as conn:
            value = await conn.scalar(select(Meta.value).where(Meta.name == GENERATION))
        return int(value or 0)

    async def ping(self) -> None:
        """Run `SELECT 1`; raises if the database cannot answer."""
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))


async def _bump_generation(conn: AsyncConnection) -> None:
    result = await conn.execute(
        update(Meta).where(Meta.name == GENERATION).values(value=Meta.value + 1)
    )
    if not result.rowcount:  # the migration seeds the row; a hand-made schema may not
        await conn.execute(insert(Meta).values(name=GENERATION, value=1))


def _checked(fields: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise TypeError(f"cannot update {', '.join(unknown)}")
    return fields


def _column_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Map record-level fields to columns (USD budgets to picodollars; empty limits to NULL)."""
    values = dict(fields)
    if "budget_usd" in values:
        budget = values.pop("budget_usd")
        values["budget_pico"] = None if budget is None else usd_to_pico(Decimal(budget))
    if "limits" in values:
        values["limits"] = values["limits"] or None
    return values


async def _user_row(conn: AsyncConnection, name: str) -> RowMapping | None:
    return (await conn.execute(select(User).where(User.name == name))).mappings().first()


def _key_select() -> Select[ApiKey, str]:
    return select(ApiKey, User.name.label("user_name")).join(User, ApiKey.user_id == User.id)


async def _key_row(conn: AsyncConnection, condition: Any) -> RowMapping | None:
    return (await conn.execute(_key_select().where(condition))).mappings().first()


def _usd(pico: int | None) -> Decimal | None:
    return None if pico is None else pico_to_usd(pico)


def _columns_of(row: RowMapping, table: FromClause) -> dict[str, Any]:
    return {column.name: row[column] for column in table.columns}


def _user_record(values: RowMapping | dict[str, Any]) -> UserRecord:
    return UserRecord(
        id=values["id"],
        name=values["name"],
        email=values["email"],
        budget_usd=_usd(values["budget_pico"]),
        budget_period=values["budget_period"],
        limits=dict(values["limits"] or {}),
        disabled=bool(values["disabled"]),
        created_at=values["created_at"],
        credit_usd=_usd(values["credit_pico"]),
    )


def _key_record(values: RowMapping | dict[str, Any], user: str | None = None) -> KeyRecord:
    models: Sequence[str] | None = values["models"]
    return KeyRecord(
        id=values["id"],
        user_id=values["user_id"],
        user=values["user_name"] if user is None else user,
        key_hash=values["key_hash"],
        display=values["display"],
        note=values["note"],
        created_at=values["created_at"],
        revoked_at=values["revoked_at"],
        expires_at=values["expires_at"],
        models=None if models is None else list(models),
        budget_usd=_usd(values["budget_pico"]),
        budget_period=values["budget_period"],
        limits=dict(values["limits"] or {}),
        last_used_at=values["last_used_at"],
    )
