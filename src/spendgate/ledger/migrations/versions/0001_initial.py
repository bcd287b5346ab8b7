"""Initial ledger schema: users, api_keys, usage_events, usage_daily, meta.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def utc_datetime() -> sa.types.TypeEngine[datetime]:
    """UTC datetime column type: timestamptz on PostgreSQL, DATETIME(6) on MySQL."""
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def big_id() -> sa.types.TypeEngine[int]:
    """Auto-increment id: BIGINT, but INTEGER on SQLite (only that is a rowid alias)."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def sum_column(name: str) -> sa.Column[int]:
    """A rollup sum: BIGINT NOT NULL DEFAULT 0."""
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))


def upgrade() -> None:
    """Create every ledger table and seed the principal generation counter."""
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("budget_pico", sa.BigInteger(), nullable=True),
        sa.Column("budget_period", sa.String(16), nullable=True),
        sa.Column("limits", sa.JSON(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
        **MYSQL,
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("display", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("revoked_at", utc_datetime(), nullable=True),
        sa.Column("expires_at", utc_datetime(), nullable=True),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("budget_pico", sa.BigInteger(), nullable=True),
        sa.Column("budget_period", sa.String(16), nullable=True),
        sa.Column("limits", sa.JSON(), nullable=True),
        sa.Column("last_used_at", utc_datetime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_keys_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        **MYSQL,
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_table(
        "usage_events",
        sa.Column("id", big_id(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("ts", utc_datetime(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_name", sa.String(200), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("key_display", sa.String(64), nullable=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("requested_model", sa.String(128), nullable=True),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_pico", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("end_user", sa.String(128), nullable=True),
        sa.Column("upstream", sa.String(64), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_usage_events"),
        sa.UniqueConstraint("request_id", name="uq_usage_events_request_id"),
        **MYSQL,
    )
    op.create_index("ix_usage_events_ts", "usage_events", ["ts"])
    op.create_index("ix_usage_events_day", "usage_events", ["day"])
    op.create_index("ix_usage_events_user_name_ts", "usage_events", ["user_name", "ts"])
    op.create_table(
        "usage_daily",
        sa.Column("id", big_id(), autoincrement=True, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_name", sa.String(200), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("end_user", sa.String(128), nullable=False),
        sa.Column("upstream", sa.String(64), nullable=False),
        sum_column("requests"),
        sum_column("prompt_tokens"),
        sum_column("completion_tokens"),
        sum_column("cached_tokens"),
        sum_column("reasoning_tokens"),
        sum_column("total_tokens"),
        sum_column("cost_pico"),
        sum_column("unpriced_requests"),
        sum_column("estimated_requests"),
        sa.PrimaryKeyConstraint("id", name="pk_usage_daily"),
        sa.UniqueConstraint(
            "day",
            "user_name",
            "key_id",
            "model",
            "source",
            "end_user",
            "upstream",
            name="uq_usage_daily_key",
        ),
        **MYSQL,
    )
    op.create_index("ix_usage_daily_user_name_day", "usage_daily", ["user_name", "day"])
    op.create_index("ix_usage_daily_key_id_day", "usage_daily", ["key_id", "day"])
    meta = op.create_table(
        "meta",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_meta"),
        **MYSQL,
    )
    op.bulk_insert(meta, [{"name": "principal_generation", "value": 0}])


def downgrade() -> None:
    """Drop every ledger table."""
    op.drop_table("meta")
    op.drop_table("usage_daily")
    op.drop_table("usage_events")
    op.drop_table("api_keys")
    op.drop_table("users")
