"""host: orders table

Revision ID: host_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "host_0001"
down_revision = None
branch_labels = ("host",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("item", sa.String(length=50), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("orders")
