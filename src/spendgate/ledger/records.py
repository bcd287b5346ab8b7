"""Read-only views of users and keys as the store returns them (money as `Decimal` USD)."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as stored; `limits` is empty when none are set."""

    id: int
    name: str
    email: str | None
    budget_usd: Decimal | None
    budget_period: str | None
    limits: dict[str, int]
    disabled: bool
    created_at: datetime
    credit_usd: Decimal | None = None  # sum of credit transactions; None: no credit account


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A gateway key as stored (its hash, never the key); `user` is the owner's name."""

    id: int
    user_id: int
    user: str
    key_hash: str
    display: str
    note: str | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    models: list[str] | None
    budget_usd: Decimal | None
    budget_period: str | None
    limits: dict[str, int]
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class CreditRecord:
    """One credit transaction: who changed the balance, by how much and why."""

    id: int
    amount_usd: Decimal
    note: str | None
    actor: str
    created_at: datetime
