"""Request bodies of the JSON API (validated, unknown fields refused) and response shapes."""

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spendgate.keys.self_service import USERNAME
from spendgate.ledger.records import KeyRecord, UserRecord
from spendgate.ledger.tracking import TrackingTokenRecord
from spendgate.limits.names import Limits
from spendgate.periods import Period

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f/]+$")]
# Picodollars must fit a signed 64-bit column: at most about 9.2 million USD.
MAX_USD = Decimal(9_000_000)
Money = Annotated[Decimal, Field(ge=0, le=MAX_USD, decimal_places=12)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    email: Annotated[str, Field(max_length=320)] | None = None
    budget_usd: Money | None = None
    budget_period: Period | None = None
    limits: Limits | None = None


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Annotated[str, Field(max_length=320)] | None = None
    budget_usd: Money | None = None
    budget_period: Period | None = None
    limits: Limits | None = None
    disabled: bool | None = None


class CreditChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount_usd: Annotated[Decimal, Field(ge=-MAX_USD, le=MAX_USD, decimal_places=12)]
    note: Annotated[str, Field(max_length=500)] | None = None
    actor: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @model_validator(mode="after")
    def _not_zero(self) -> "CreditChange":
        if not self.amount_usd:
            raise ValueError("'amount_usd' must not be 0")
        return self


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Name | None = None
    label: Name | None = None
    note: Annotated[str, Field(max_length=500)] | None = None
    budget_usd: Money | None = None
    budget_period: Period | None = None
    models: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    expires_at: datetime | None = None
    limits: Limits | None = None

    @model_validator(mode="after")
    def _needs_user(self) -> "KeyCreate":
        if not (self.user or self.label):
            raise ValueError("'user' (or 'label') is required")
        return self


class KeyPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: Annotated[str, Field(max_length=500)] | None = None
    budget_usd: Money | None = None
    budget_period: Period | None = None
    models: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    expires_at: datetime | None = None
    limits: Limits | None = None


class TrackingTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    user: Name | None = None


class TrackingTokenPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    active: bool | None = None
    name: Name | None = None

    @field_validator("active", "name")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:  # given as null: absent means unchanged, null means nothing
            raise ValueError("must not be null")
        return value

    @model_validator(mode="after")
    def _changes_something(self) -> "TrackingTokenPatch":
        if not self.model_fields_set:
            raise ValueError("nothing to change: give 'active' and/or 'name'")
        return self


# Client-push ingestion (POST /ingest). Token counts are strict integers: "12", 12.0 and
# true are refused rather than coerced, and anything over a billion is a client's bug.
MAX_INGEST_TOKENS = 10**9
TokenCount = Annotated[int, Field(strict=True, ge=0, le=MAX_INGEST_TOKENS)]


class IngestEvent(BaseModel):
    """One usage event pushed by a client that called a provider directly."""

    model_config = ConfigDict(extra="forbid")
    tracking_token: Annotated[str, Field(min_length=1, max_length=200)]
    model: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
    prompt_tokens: TokenCount
    completion_tokens: TokenCount
    total_tokens: TokenCount | None = None
    cached_tokens: TokenCount = 0
    reasoning_tokens: TokenCount = 0
    timestamp: datetime | None = None  # ISO-8601; without an offset it is UTC
    request_id: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    end_user: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    def inconsistency(self) -> tuple[str, str] | None:
        """(field, message) for counts that contradict each other, else None."""
        expected = self.prompt_tokens + self.completion_tokens
        if self.total_tokens is not None and self.total_tokens != expected:
            return "total_tokens", (
                f"must equal prompt_tokens + completion_tokens ({expected}), "
                f"not {self.total_tokens}"
            )
        if self.cached_tokens > self.prompt_tokens:
            return "cached_tokens", "must not exceed prompt_tokens"
        if self.reasoning_tokens > self.completion_tokens:
            return "reasoning_tokens", "must not exceed completion_tokens"
        return None


class SelfServiceKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The username's own rules (keys/self_service.py) give the 400, with their own message;
    # this bounds it, and the spec documents the rule.
    username: Annotated[
        str, Field(max_length=200, json_schema_extra={"pattern": f"^{USERNAME.pattern}$"})
    ]
    note: Annotated[str, Field(max_length=500)] | None = None


def user_json(user: UserRecord, spend_usd: Decimal, balance_usd: Decimal | None) -> dict[str, Any]:
    """The contract's user object."""
    return {
        "name": user.name,
        "email": user.email,
        "budget_usd": user.budget_usd,
        "budget_period": user.budget_period,
        "spend_usd": spend_usd,
        "balance_usd": balance_usd,
        "limits": user.limits,
        "disabled": user.disabled,
        "created_at": user.created_at,
    }


def key_json(key: KeyRecord) -> dict[str, Any]:
    """The contract's key listing object (never the key itself)."""
    return {
        "id": key.id,
        "user": key.user,
        "note": key.note,
        "display": key.display,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "expires_at": key.expires_at,
        "models": key.models,
        "budget_usd": key.budget_usd,
        "budget_period": key.budget_period,
        "limits": key.limits,
        "last_used_at": key.last_used_at,
    }


def tracking_token_json(token: TrackingTokenRecord) -> dict[str, Any]:
    """A tracking token as listed (never the token itself)."""
    return {
        "id": token.id,
        "name": token.name,
        "user": token.user,
        "display": token.display,
        "active": token.active,
        "created_at": token.created_at,
    }


def self_service_key_json(key: KeyRecord) -> dict[str, Any]:
    """A key as /public/keys lists it: display form and dates only."""
    return {
        "id": key.id,
        "display": key.display,
        "note": key.note,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
    }
