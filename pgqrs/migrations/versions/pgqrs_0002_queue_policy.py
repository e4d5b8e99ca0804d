"""Queue policy on pgqrs_queues: dead-letter threshold, lease, backoff, retention, paused.

Revision ID: pgqrs_0002
Revises: pgqrs_0001
Create Date: 2026-11-29

Written to run while producers and consumers keep working (see "How to write a pgqrs
migration" in docs/guides/alembic.md):

- Only ``pgqrs_queues`` changes: one row per queue, never a hot or big table. Every
  statement still needs its ACCESS EXCLUSIVE lock, and every enqueue takes a share lock on
  it (the foreign key check), so the step runs under ``SET LOCAL lock_timeout``: rather
  than queueing behind a long transaction while every enqueue queues behind *us*, it gives
  up after ``LOCK_TIMEOUT`` inside a SAVEPOINT, pauses (server side, so a host's event loop
  keeps running) and tries again, up to ``ATTEMPTS`` times.
- ``ADD COLUMN ... DEFAULT <constant>`` rewrites nothing since PostgreSQL 11 (on 10 the
  rewrite is of this tiny table). The defaults reproduce the behaviour of pgqrs before the
  policy: 5 deliveries, a 30 s lease, backoff 1 s to 300 s, keep forever, not paused.
- The CHECK constraints are added valid, not ``NOT VALID`` + ``VALIDATE``: the split only
  pays off when the validating scan is long, and here it reads a handful of rows whose new
  columns hold the (valid) defaults, under the lock this step holds anyway.
- No index: nothing looks queues up by these columns.

This file is released: it never changes again (tests/migrations pins its checksum). The
retry helper lives here, not in pgqrs.migrate, so that its behaviour is frozen with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from pgqrs.migrate import migration_schema

revision: str = "pgqrs_0002"
down_revision: str | Sequence[str] | None = "pgqrs_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "1s"
"""Longest wait for a lock, hence the longest a client call stalls behind this step."""
ATTEMPTS = 30
"""Tries before giving up: with the pauses, a little over two minutes in all."""
PAUSE = 0.25
"""First pause between tries in seconds; it doubles up to ``MAX_PAUSE``."""
MAX_PAUSE = 4.0

_LOCK_NOT_AVAILABLE = "55P03"
_TABLE = "pgqrs_queues"
_INTERVAL = sa.Interval()
_CHECKS = (
    ("ck_pgqrs_queues_max_read_ct_positive", "max_read_ct >= 1"),
    ("ck_pgqrs_queues_visibility_timeout_positive", "visibility_timeout > interval '0'"),
    ("ck_pgqrs_queues_retry_backoff_base_not_negative", "retry_backoff_base >= interval '0'"),
    ("ck_pgqrs_queues_retry_backoff_max_not_below_base",
     "retry_backoff_max >= retry_backoff_base"),
    ("ck_pgqrs_queues_retention_positive", "retention IS NULL OR retention > interval '0'"),
)

log = logging.getLogger("pgqrs.migrations")


def upgrade() -> None:
    schema = migration_schema()

    def add_policy() -> None:
        columns: tuple[sa.Column[object], ...] = (
            sa.Column("max_read_ct", sa.Integer(), server_default=sa.text("5"), nullable=False),
            sa.Column("visibility_timeout", _INTERVAL,
                      server_default=sa.text("'00:00:30'::interval"), nullable=False),
            sa.Column("retry_backoff_base", _INTERVAL,
                      server_default=sa.text("'00:00:01'::interval"), nullable=False),
            sa.Column("retry_backoff_max", _INTERVAL,
                      server_default=sa.text("'00:05:00'::interval"), nullable=False),
            sa.Column("retention", _INTERVAL, nullable=True),
            sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        )
        for column in columns:
            op.add_column(_TABLE, column, schema=schema)
        for name, condition in _CHECKS:
            # op.f(): the name is final. Without it Alembic would apply the naming convention
            # of whichever metadata the running env has (pgqrs's, or a host's in mode C).
            op.create_check_constraint(op.f(name), _TABLE, condition, schema=schema)

    run_with_lock_timeout(add_policy)


def downgrade() -> None:
    schema = migration_schema()

    def drop_policy() -> None:
        for name, _ in reversed(_CHECKS):
            op.drop_constraint(op.f(name), _TABLE, type_="check", schema=schema)
        for column in ("paused", "retention", "retry_backoff_max", "retry_backoff_base",
                       "visibility_timeout", "max_read_ct"):
            op.drop_column(_TABLE, column, schema=schema)

    run_with_lock_timeout(drop_policy)


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
    go on during the pause. The caller's ``lock_timeout`` is restored on success (on
    failure the caller's transaction is rolled back, and the setting with it).

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
    # The released savepoint kept the SET LOCAL: give later steps the caller's value back.
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
