"""The ledger's tables as SQLAlchemy declarative models (the source of truth for migrations).

Money is integer picodollars (`BigInteger`), so sums are exact on every engine. Datetimes are
stored in UTC and always read back timezone-aware. MySQL/MariaDB tables use a binary
collation: names, models and request ids compare exactly as on SQLite and PostgreSQL.
"""

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
MYSQL_TABLE_ARGS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

# Column widths shared by usage_events and usage_daily (the rollup key copies event fields).
USER_LEN = 200
MODEL_LEN = 128
SOURCE_LEN = 16
END_USER_LEN = 128
UPSTREAM_LEN = 64
ROLLUP_KEY = ("day", "user_name", "key_id", "model", "source", "end_user", "upstream")
ROLLUP_SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_pico",
    "unpriced_requests",
    "estimated_requests",
)
# The coarse rollup usage_daily_user: the fields of ROLLUP_KEY that reports group and filter
# by most, without key, end user and upstream (those make most of usage_daily's rows).
USER_ROLLUP_KEY = ("day", "user_name", "model", "source")
GENERATION = "principal_generation"

# SQLite only auto-increments an INTEGER PRIMARY KEY; BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored as UTC and read back timezone-aware (UTC) on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """Use microsecond precision on MySQL/MariaDB (DATETIME defaults to whole seconds)."""
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; naive values are taken as UTC. Only PostgreSQL keeps the tzinfo."""
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to naive values read back."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base holding the ledger's metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A person or app that owns keys and may carry a budget and limits."""

    __tablename__ = "users"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(USER_LEN), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    budget_pico: Mapped[int | None] = mapped_column(BigInteger)
    budget_period: Mapped[str | None] = mapped_column(String(16))
    limits: Mapped[dict[str, int] | None] = mapped_column(JSON)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    # Sum of the user's credit transactions, kept in the same transaction as each of them;
    # NULL: the user has no credit account (no prepaid balance is enforced).
    credit_pico: Mapped[int | None] = mapped_column(BigInteger)


class CreditTransaction(Base):
    """One change to a user's prepaid credit: a top-up (> 0), refund or correction (< 0)."""

    __tablename__ = "credit_transactions"
    __table_args__ = (Index(None, "user_id", "id"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    amount_pico: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class ApiKey(Base):
    """A gateway key, stored only as its sha256 hash."""

    __tablename__ = "api_keys"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    models: Mapped[list[str] | None] = mapped_column(JSON)
    budget_pico: Mapped[int | None] = mapped_column(BigInteger)
    budget_period: Mapped[str | None] = mapped_column(String(16))
    limits: Mapped[dict[str, int] | None] = mapped_column(JSON)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TrackingToken(Base):
    """A tracking token for client-push ingestion, stored only as its sha256 hash.

    `user_id` is the user its pushed usage belongs to; NULL when the token names none.
    """

    __tablename__ = "tracking_tokens"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(USER_LEN))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class UsageEventRow(Base):
    """One request in the ledger; `request_id` is unique so a retried write counts once."""

    __tablename__ = "usage_events"
    __table_args__ = (Index(None, "user_name", "ts"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    user_name: Mapped[str] = mapped_column(String(USER_LEN))
    key_id: Mapped[int | None] = mapped_column(Integer)
    key_display: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(MODEL_LEN))
    requested_model: Mapped[str | None] = mapped_column(String(MODEL_LEN))
    endpoint: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    stream: Mapped[bool] = mapped_column(Boolean)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_pico: Mapped[int | None] = mapped_column(BigInteger)  # None: model has no price
    # The cost the provider reported (OpenRouter), None when it reported none.
    provider_cost_pico: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[int] = mapped_column(Integer)
    estimated: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(SOURCE_LEN))
    end_user: Mapped[str | None] = mapped_column(String(END_USER_LEN))
    upstream: Mapped[str | None] = mapped_column(String(UPSTREAM_LEN))
    error_code: Mapped[str | None] = mapped_column(String(64))


def _sum_column() -> Mapped[int]:
    return mapped_column(BigInteger, default=0, server_default=text("0"))


class RollupSums:
    """The sums both daily rollups keep, named as in `ROLLUP_SUMS` (a mixin)."""

    requests: Mapped[int] = _sum_column()
    prompt_tokens: Mapped[int] = _sum_column()
    completion_tokens: Mapped[int] = _sum_column()
    cached_tokens: Mapped[int] = _sum_column()
    reasoning_tokens: Mapped[int] = _sum_column()
    total_tokens: Mapped[int] = _sum_column()
    cost_pico: Mapped[int] = _sum_column()  # sum over priced requests only
    unpriced_requests: Mapped[int] = _sum_column()
    estimated_requests: Mapped[int] = _sum_column()


class UsageDaily(RollupSums, Base):
    """Per-day rollup of usage_events, kept in the same transaction as the events.

    The key has no NULLs (so the unique constraint holds on every engine): key_id 0 means
    no key, '' means no end user / no upstream.
    """

    __tablename__ = "usage_daily"
    __table_args__ = (
        UniqueConstraint(*ROLLUP_KEY, name="uq_usage_daily_key"),
        Index(None, "user_name", "day"),
        Index(None, "key_id", "day"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)
    user_name: Mapped[str] = mapped_column(String(USER_LEN))
    key_id: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(MODEL_LEN))
    source: Mapped[str] = mapped_column(String(SOURCE_LEN))
    end_user: Mapped[str] = mapped_column(String(END_USER_LEN))
    upstream: Mapped[str] = mapped_column(String(UPSTREAM_LEN))


class UsageDailyUser(RollupSums, Base):
    """usage_daily summed over key, end user and upstream; kept in the same transaction.

    Reports that only group by and filter on user, model, day and source read this table:
    a tenth of usage_daily's rows at scale. The key is the primary key, so the rows are
    stored in (day, user_name, ...) order on SQLite (WITHOUT ROWID) and InnoDB alike and a
    day range is read in one sequential pass, grouped by day and user without sorting.
    """

    __tablename__ = "usage_daily_user"
    __table_args__ = (
        Index(None, "user_name", "day"),
        {**MYSQL_TABLE_ARGS, "sqlite_with_rowid": False},
    )

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(USER_LEN), primary_key=True)
    model: Mapped[str] = mapped_column(String(MODEL_LEN), primary_key=True)
    source: Mapped[str] = mapped_column(String(SOURCE_LEN), primary_key=True)


class AlertRow(Base):
    """One budget or balance threshold crossed, recorded once per subject, threshold, period.

    The unique key makes the insert the decision: of several gateway instances that see the
    same crossing, only the one whose insert lands records it. `period_key` names the budget
    period (`monthly:2026-11-01`) or, for balances, the credit total it was crossed under.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint(
            "subject_kind", "subject_id", "threshold", "period_key", name="uq_alerts_crossing"
        ),
        Index(None, "delivered_at", "next_attempt_at"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subject_kind: Mapped[str] = mapped_column(String(8))  # user | key
    subject_id: Mapped[int] = mapped_column(Integer)
    user_name: Mapped[str] = mapped_column(String(USER_LEN))
    key_display: Mapped[str | None] = mapped_column(String(64))
    threshold: Mapped[str] = mapped_column(String(32))
    period: Mapped[str | None] = mapped_column(String(16))
    period_start: Mapped[date | None] = mapped_column(Date)
    period_key: Mapped[str] = mapped_column(String(64))
    budget_pico: Mapped[int | None] = mapped_column(BigInteger)
    spend_pico: Mapped[int | None] = mapped_column(BigInteger)
    balance_pico: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(String(500))


class Meta(Base):
    """Named counters; `principal_generation` moves on every user/key change."""

    __tablename__ = "meta"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
