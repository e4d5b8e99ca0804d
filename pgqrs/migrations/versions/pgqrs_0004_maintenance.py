"""Maintenance: recurring messages, the runner's lease, storage settings of the hot table.

Revises: pgqrs_0003
Create Date: 2026-11-29

Written to run while producers and consumers keep working (see "How to write a pgqrs
migration" in docs/guides/alembic.md and docs/guides/maintenance.md):

- ``pgqrs_schedules`` and ``pgqrs_maintenance`` are new tables: creating them locks nothing
  that clients use, except the foreign key from ``pgqrs_schedules`` to ``pgqrs_queues``,
  which takes SHARE ROW EXCLUSIVE on ``pgqrs_queues`` for a moment. That mode does not
  conflict with enqueues (their foreign-key check takes ROW SHARE) but does with a policy
  change (ROW EXCLUSIVE), so the step runs under ``lock_timeout`` and is retried, as in
  ``pgqrs_0002``.
- Storage parameters: ``ALTER TABLE ... SET (...)`` takes SHARE UPDATE EXCLUSIVE, which
  DML never conflicts with (autovacuum yields to it), and rewrites nothing: the new
  ``fillfactor`` applies to pages filled from now on. Values and their reasons are in
  ``MESSAGES_STORAGE`` / ``ARCHIVE_STORAGE`` below and in docs/guides/maintenance.md.
- No index on ``pgqrs_messages`` changes here (the claim index belongs to the message
  options revision).

Until released, the revision id lives in ``revision`` below only (the tests import it).
The retry helper is a copy of pgqrs_0002's, frozen with this file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from pgqrs.migrate import migration_schema

revision: str = "pgqrs_0004"
down_revision: str | Sequence[str] | None = "pgqrs_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "1s"
"""Longest wait for a lock, hence the longest a client call stalls behind this step."""
ATTEMPTS = 30
"""Tries before giving up: with the pauses, a little over two minutes in all."""
PAUSE = 0.25
"""First pause between tries in seconds; it doubles up to ``MAX_PAUSE``."""
MAX_PAUSE = 4.0

MESSAGES_STORAGE = (
    # Room on each page for the claim's and the release's new row versions, so they stay
    # on the page the row was inserted in (HOT when no indexed column changes), instead
    # of moving to the end of the table. Live rows are few and short-lived, so the 15%
    # costs little space.
    ("fillfactor", "85"),
    # Vacuum after ~1,000 dead rows rather than 20% of the table: a queue table is mostly
    # dead rows between vacuums, and dead index entries at the head of the claim index
    # are what slows the claim down. Unthrottled, because the table stays small.
    ("autovacuum_vacuum_threshold", "1000"),
    ("autovacuum_vacuum_scale_factor", "0.01"),
    ("autovacuum_vacuum_cost_delay", "0"),
    ("autovacuum_analyze_threshold", "1000"),
    ("autovacuum_analyze_scale_factor", "0.05"),
)
ARCHIVE_STORAGE = (
    # Purges delete in bulk: reclaim the space after 5% of the table is dead, not 20%.
    ("autovacuum_vacuum_scale_factor", "0.05"),
)

_LOCK_NOT_AVAILABLE = "55P03"
_NOW = sa.text("now()")
_TIMESTAMP = sa.DateTime(timezone=True)

log = logging.getLogger("pgqrs.migrations")


def upgrade() -> None:
    schema = migration_schema()

    def create() -> None:
        op.create_table(
            "pgqrs_schedules",
            sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
            sa.Column("name", sa.String(length=255), nullable=False),
            sa.Column("queue_id", sa.BigInteger(), nullable=False),
            sa.Column("cron", sa.Text(), nullable=False),
            sa.Column("timezone", sa.Text(), server_default=sa.text("'UTC'"), nullable=False),
            sa.Column("payload", sa.dialects.postgresql.JSONB(), nullable=False),
            sa.Column("headers", sa.dialects.postgresql.JSONB(), nullable=True),
            sa.Column("catch_up", sa.Boolean(), server_default=sa.text("true"),
                      nullable=False),
            sa.Column("next_run", _TIMESTAMP, nullable=False),
            sa.Column("last_run_at", _TIMESTAMP, nullable=True),
            sa.Column("last_message_id", sa.BigInteger(), nullable=True),
            sa.Column("created_at", _TIMESTAMP, server_default=_NOW, nullable=False),
            sa.ForeignKeyConstraint(
                ["queue_id"], [f"{schema}.pgqrs_queues.id"],
                name="fk_pgqrs_schedules_queue_id_pgqrs_queues", ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("id", name="pk_pgqrs_schedules"),
            sa.UniqueConstraint("name", name="uq_pgqrs_schedules_name"),
            schema=schema,
        )
        op.create_index("ix_pgqrs_schedules_next_run", "pgqrs_schedules", ["next_run"],
                        schema=schema)
        lease = op.create_table(
            "pgqrs_maintenance",
            sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
            sa.Column("holder", sa.Text(), nullable=True),
            sa.Column("acquired_at", _TIMESTAMP, nullable=True),
            sa.Column("lease_until", _TIMESTAMP, server_default=sa.text("'-infinity'"),
                      nullable=False),
            sa.Column("last_round_at", _TIMESTAMP, nullable=True),
            sa.CheckConstraint("id = 1", name=op.f("ck_pgqrs_maintenance_single_row")),
            sa.PrimaryKeyConstraint("id", name="pk_pgqrs_maintenance"),
            schema=schema,
        )
        op.bulk_insert(lease, [{"id": 1}])
        _set_storage(schema, "pgqrs_messages", MESSAGES_STORAGE)
        _set_storage(schema, "pgqrs_archive", ARCHIVE_STORAGE)

    run_with_lock_timeout(create)


def downgrade() -> None:
    schema = migration_schema()

    def drop() -> None:
        _reset_storage(schema, "pgqrs_archive", ARCHIVE_STORAGE)
        _reset_storage(schema, "pgqrs_messages", MESSAGES_STORAGE)
        op.drop_table("pgqrs_maintenance", schema=schema)
        op.drop_index("ix_pgqrs_schedules_next_run", "pgqrs_schedules", schema=schema)
        op.drop_table("pgqrs_schedules", schema=schema)

    run_with_lock_timeout(drop)


def _table(schema: str, table: str) -> str:
    quote = op.get_context().dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(table)}"


def _set_storage(schema: str, table: str, options: Sequence[tuple[str, str]]) -> None:
    settings = ", ".join(f"{name} = {value}" for name, value in options)
    op.execute(f"ALTER TABLE {_table(schema, table)} SET ({settings})")


def _reset_storage(schema: str, table: str, options: Sequence[tuple[str, str]]) -> None:
    op.execute(f"ALTER TABLE {_table(schema, table)} RESET "
               f"({', '.join(name for name, _ in options)})")


def run_with_lock_timeout(step: Callable[[], None]) -> None:
    """Run ``step`` under ``lock_timeout``, retried in a SAVEPOINT while locks are busy.

    Offline (``--sql``) the script just sets the timeout before the step: whoever applies
    it re-runs it if it times out (it is one transaction, so nothing is left half done).
    """
    if op.get_context().as_sql:
        op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        step()
        return
    retry_on_lock_timeout(op.get_bind(), step)


def retry_on_lock_timeout(bind: sa.Connection, step: Callable[[], None], *,
                          attempts: int = ATTEMPTS, pause: float = PAUSE) -> None:
    """Run ``step`` on ``bind`` (already in a transaction) until it gets its locks.

    Each try runs in a SAVEPOINT with ``SET LOCAL lock_timeout``: a try that times out
    rolls back to the savepoint, which releases whatever it had locked, so waiting clients
    go on during the pause. The caller's ``lock_timeout`` is restored on success.

    Raises:
        sqlalchemy.exc.DBAPIError: the last try's lock timeout, or any other error.
    """
    previous = bind.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar_one()
    for attempt in range(1, attempts + 1):
        try:
            with bind.begin_nested():
                bind.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                step()
            break
        except sa.exc.DBAPIError as exc:
            if _sqlstate(exc) != _LOCK_NOT_AVAILABLE or attempt == attempts:
                raise
            wait = min(pause * 2 ** (attempt - 1), MAX_PAUSE)
            log.warning("pgqrs migration %s: lock not available within %s (try %d of %d); "
                        "retrying in %.2fs", revision, LOCK_TIMEOUT, attempt, attempts, wait)
            # Sleep in the server: a blocking time.sleep() would stall the event loop of an
            # application that runs install() inside it.
            bind.execute(sa.text("SELECT pg_sleep(:s)"), {"s": wait})
    bind.execute(sa.text("SELECT set_config('lock_timeout', :v, true)"), {"v": previous})


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE under SQLAlchemy's wrapper, for asyncpg, psycopg 3 and psycopg2."""
    current: BaseException | None = exc
    for _ in range(4):
        if current is None:
            return None
        for attribute in ("sqlstate", "pgcode"):
            state = getattr(current, attribute, None)
            if isinstance(state, str) and state:
                return state
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None
