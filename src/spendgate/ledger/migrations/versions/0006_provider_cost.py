"""The cost the provider reported for a request (OpenRouter's `usage.cost`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

A nullable column without a default: a plain ADD COLUMN on SQLite, PostgreSQL and MariaDB,
which rewrites no rows (existing events read NULL: no cost reported).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add usage_events.provider_cost_pico."""
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(sa.Column("provider_cost_pico", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Drop usage_events.provider_cost_pico (SQLite: by copying the table, in batch mode)."""
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("provider_cost_pico")
