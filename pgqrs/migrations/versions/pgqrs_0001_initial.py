"""Initial pgqrs schema: queues, workers, messages, archive.

Revision ID: pgqrs_0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from pgqrs.migrate import migration_schema

revision: str = "pgqrs_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("pgqrs",)
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def upgrade() -> None:
    schema = migration_schema()
    op.create_table(
        "pgqrs_queues",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("queue_name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pgqrs_queues"),
        sa.UniqueConstraint("queue_name", name="uq_pgqrs_queues_queue_name"),
        schema=schema,
    )
    op.create_table(
        "pgqrs_workers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("queue_id", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), server_default=NOW,
                  nullable=False),
        sa.Column("shutdown_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "status",
            postgresql.ENUM("ready", "suspended", "stopped", name="worker_status", schema=schema),
            server_default=sa.text("'ready'"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["queue_id"], [f"{schema}.pgqrs_queues.id"],
            name="fk_pgqrs_workers_queue_id_pgqrs_queues", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_pgqrs_workers"),
        sa.UniqueConstraint("hostname", "port", name="uq_pgqrs_workers_hostname_port"),
        schema=schema,
    )
    op.create_index("ix_pgqrs_workers_queue_id_status", "pgqrs_workers",
                    ["queue_id", "status"], schema=schema)
    op.create_index("ix_pgqrs_workers_heartbeat_at", "pgqrs_workers", ["heartbeat_at"],
                    schema=schema)
    op.create_table(
        "pgqrs_messages",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("queue_id", sa.BigInteger(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("vt", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("read_ct", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("dequeued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("producer_worker_id", sa.BigInteger(), nullable=True),
        sa.Column("consumer_worker_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["queue_id"], [f"{schema}.pgqrs_queues.id"],
            name="fk_pgqrs_messages_queue_id_pgqrs_queues",
        ),
        sa.ForeignKeyConstraint(
            ["producer_worker_id"], [f"{schema}.pgqrs_workers.id"],
            name="fk_pgqrs_messages_producer_worker_id_pgqrs_workers", ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["consumer_worker_id"], [f"{schema}.pgqrs_workers.id"],
            name="fk_pgqrs_messages_consumer_worker_id_pgqrs_workers", ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_pgqrs_messages"),
        schema=schema,
    )
    op.create_index("ix_pgqrs_messages_queue_id_id", "pgqrs_messages", ["queue_id", "id"],
                    schema=schema)
    op.create_index("ix_pgqrs_messages_consumer_worker_id", "pgqrs_messages",
                    ["consumer_worker_id"], schema=schema)
    op.create_index("ix_pgqrs_messages_producer_worker_id", "pgqrs_messages",
                    ["producer_worker_id"], schema=schema)
    op.create_table(
        "pgqrs_archive",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("original_msg_id", sa.BigInteger(), nullable=False),
        sa.Column("queue_id", sa.BigInteger(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("read_ct", sa.Integer(), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("dequeued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("producer_worker_id", sa.BigInteger(), nullable=True),
        sa.Column("consumer_worker_id", sa.BigInteger(), nullable=True),
        sa.Column("dead_letter", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pgqrs_archive"),
        schema=schema,
    )
    for columns in (["queue_id", "id"], ["archived_at"], ["original_msg_id"],
                    ["producer_worker_id"], ["consumer_worker_id"]):
        op.create_index(f"ix_pgqrs_archive_{'_'.join(columns)}", "pgqrs_archive", columns,
                        schema=schema)


def downgrade() -> None:
    schema = migration_schema()
    op.drop_table("pgqrs_archive", schema=schema)
    op.drop_table("pgqrs_messages", schema=schema)
    op.drop_table("pgqrs_workers", schema=schema)
    op.drop_table("pgqrs_queues", schema=schema)
    op.execute(f'DROP TYPE "{schema}".worker_status')
