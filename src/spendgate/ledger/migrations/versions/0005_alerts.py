"""Budget and balance alerts, one row per subject, threshold and period.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
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
    """Create the alerts table."""
    op.create_table(
        "alerts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("subject_kind", sa.String(8), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(200), nullable=False),
        sa.Column("key_display", sa.String(64), nullable=True),
        sa.Column("threshold", sa.String(32), nullable=False),
        sa.Column("period", sa.String(16), nullable=True),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("period_key", sa.String(64), nullable=False),
        sa.Column("budget_pico", sa.BigInteger(), nullable=True),
        sa.Column("spend_pico", sa.BigInteger(), nullable=True),
        sa.Column("balance_pico", sa.BigInteger(), nullable=True),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("delivered_at", utc_datetime(), nullable=True),
        sa.Column("next_attempt_at", utc_datetime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.UniqueConstraint(
            "subject_kind", "subject_id", "threshold", "period_key", name="uq_alerts_crossing"
        ),
        **MYSQL,
    )
    op.create_index("ix_alerts_delivered_at_next_attempt_at", "alerts",
                    ["delivered_at", "next_attempt_at"])  # fmt: skip


def downgrade() -> None:
    """Drop the alerts table with its indexes."""
    op.drop_table("alerts")
