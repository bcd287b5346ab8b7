"""Prepaid credits: the credit_transactions ledger and each user's running credit sum.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
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
    """Add users.credit_pico and the credit_transactions table."""
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("credit_pico", sa.BigInteger(), nullable=True))
    op.create_table(
        "credit_transactions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("amount_pico", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_credit_transactions"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_credit_transactions_user_id_users"
        ),
        **MYSQL,
    )
    op.create_index("ix_credit_transactions_user_id_id", "credit_transactions", ["user_id", "id"])


def downgrade() -> None:
    """Drop what `upgrade` added."""
    op.drop_index("ix_credit_transactions_user_id_id", table_name="credit_transactions")
    op.drop_table("credit_transactions")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("credit_pico")
