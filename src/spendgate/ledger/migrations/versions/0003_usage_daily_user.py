"""The coarse daily rollup usage_daily_user, backfilled from usage_daily.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}
KEY = ("day", "user_name", "model", "source")
SUMS = (
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


def sum_column(name: str) -> sa.Column[int]:
    """A rollup sum: BIGINT NOT NULL DEFAULT 0."""
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))


def upgrade() -> None:
    """Create usage_daily_user and fill it with usage_daily summed over its key."""
    op.create_table(
        "usage_daily_user",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_name", sa.String(200), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        *(sum_column(name) for name in SUMS),
        sa.PrimaryKeyConstraint(*KEY, name="pk_usage_daily_user"),
        sqlite_with_rowid=False,
        **MYSQL,
    )
    op.create_index("ix_usage_daily_user_user_name_day", "usage_daily_user", ["user_name", "day"])
    op.execute(_backfill())


def _backfill() -> sa.Insert:
    """INSERT INTO usage_daily_user SELECT ... FROM usage_daily GROUP BY the coarse key."""
    daily = sa.table("usage_daily", *(sa.column(name) for name in (*KEY, *SUMS)))
    coarse = sa.table("usage_daily_user", *(sa.column(name) for name in (*KEY, *SUMS)))
    keys = [daily.c[name] for name in KEY]
    # SUM(BIGINT) is NUMERIC on PostgreSQL and DECIMAL on MySQL: stored back as BIGINT exactly.
    sums = [sa.func.sum(daily.c[name]) for name in SUMS]
    query = sa.select(*keys, *sums).group_by(*keys).order_by(*keys)
    return sa.insert(coarse).from_select([*KEY, *SUMS], query)


def downgrade() -> None:
    """Drop what `upgrade` added."""
    op.drop_index("ix_usage_daily_user_user_name_day", table_name="usage_daily_user")
    op.drop_table("usage_daily_user")
