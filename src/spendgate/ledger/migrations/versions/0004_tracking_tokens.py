"""Tracking tokens for client-push ingestion, stored only as their hash.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
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


def upgrade() -> None:
    """Create the tracking_tokens table."""
    op.create_table(
        "tracking_tokens",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("display", sa.String(64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracking_tokens"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_tracking_tokens_user_id_users"),
        sa.UniqueConstraint("token_hash", name="uq_tracking_tokens_token_hash"),
        **MYSQL,
    )
    op.create_index("ix_tracking_tokens_user_id", "tracking_tokens", ["user_id"])


def downgrade() -> None:
    """Drop what `upgrade` added (its index goes with it: MySQL keeps a foreign key's index)."""
    op.drop_table("tracking_tokens")
