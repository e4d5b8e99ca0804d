"""Message options: priority, deduplication key, headers and ordered groups (SPEC §13).

Revision ID: pgqrs_0003
Revises: pgqrs_0002
Create Date: 2026-12-05

Adds ``priority``, ``parked``, ``dedup_key``, ``group_key`` and ``headers`` to
``pgqrs_messages`` (and all but ``parked`` to ``pgqrs_archive``), the table ``pgqrs_groups``
(one row per ordered group: its lock, counter and "needs a head" flag), and three indexes on
``pgqrs_messages``: the claim order, one live message per dedup key, and the parked
messages behind each group head. Written to run while producers and consumers keep working
(see "How to write a pgqrs migration" in docs/guides/alembic.md):

- Columns: ``ADD COLUMN`` with a constant default (or none) rewrites nothing; each table's
  columns come in one ``ALTER TABLE`` whose ACCESS EXCLUSIVE lock is held for a moment,
  taken under ``lock_timeout`` and retried (as in ``pgqrs_0002``), so clients queue behind
  it for at most ``LOCK_TIMEOUT``.
- ``pgqrs_groups`` is new, hence empty: created in place.
- Indexes: a plain ``CREATE INDEX`` holds a SHARE lock that stops every enqueue and ack
  until the build ends (seconds per million live messages). So the slow part can run
  *before* the upgrade's transaction: ``prepare_online()``, which ``pgqrs.migrate`` calls
  on an autocommit connection whenever pgqrs owns the connection (``Admin.install()``,
  ``pgqrs install``, ``alembic upgrade head`` through pgqrs's env), adds the columns as
  above and then builds the indexes ``CONCURRENTLY`` (writes go on), under pgqrs's install
  advisory lock held at session level. It is re-runnable: ``IF NOT EXISTS`` everywhere, and
  an INVALID index left by an interrupted build is dropped and built again. ``upgrade()``
  then finds everything in place and only records the revision.
- Without that step (a fresh install, whose tables are created empty in the same
  transaction; ``Admin.install(connection=...)`` inside the caller's transaction; a host's
  own env; the ``--sql`` script) ``upgrade()`` builds the missing indexes in its
  transaction: instant on small tables; on a big live table writes wait for the build, and
  a warning says so (and how to avoid it).
- Downgrade drops the indexes, ``pgqrs_groups`` and the columns: every message and archive
  row stays (their options go). Rows stay claimable: the old claim ignores ``parked``.

This file is released once the release that ships it is cut: then it never changes again
(tests/migrations pins its checksum). The retry helper is a copy of ``pgqrs_0002``'s, so
that its behaviour is frozen with this revision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from pgqrs.migrate import migration_schema

revision: str = "pgqrs_0003"
down_revision: str | Sequence[str] | None = "pgqrs_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "1s"
"""Longest wait for a lock, hence the longest a client call stalls behind this revision."""
ATTEMPTS = 30
"""Tries of a locking step before giving up: with the pauses, a little over two minutes."""
PAUSE = 0.25
"""First pause between tries in seconds; it doubles up to ``MAX_PAUSE``."""
MAX_PAUSE = 4.0
BIG_TABLE = 100_000
"""Live messages above which building the indexes inside a transaction earns a warning."""

_LOCK_NOT_AVAILABLE = "55P03"
_MESSAGES = "pgqrs_messages"
_ARCHIVE = "pgqrs_archive"
_GROUPS = "pgqrs_groups"
_MESSAGE_COLUMNS = (
    ("priority", "smallint DEFAULT 0 NOT NULL"),
    ("parked", "boolean DEFAULT false NOT NULL"),
    ("dedup_key", "text"),
    ("group_key", "text"),
    ("headers", "jsonb"),
)
_ARCHIVE_COLUMNS = (
    ("priority", "smallint DEFAULT 0 NOT NULL"),
    ("dedup_key", "text"),
    ("group_key", "text"),
    ("headers", "jsonb"),
)
# (name, unique, columns and predicate): the models' indexes, spelled out as DDL.
_INDEXES = (
    ("ix_pgqrs_messages_claim", False, "(queue_id, priority DESC, vt, id) WHERE NOT parked"),
    ("uq_pgqrs_messages_dedup_key", True,
     "(queue_id, dedup_key) WHERE dedup_key IS NOT NULL"),
    ("ix_pgqrs_messages_parked", False, "(queue_id, group_key, id) WHERE parked"),
)

log = logging.getLogger("pgqrs.migrations")


def upgrade() -> None:
    schema = migration_schema()
    context = op.get_context()
    quoted = context.dialect.identifier_preparer.quote_schema(schema)
    if context.as_sql:
        # The reviewable script: every step, in one transaction, re-runnable.
        op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for statement in _column_statements(quoted):
            op.execute(statement)
        for statement in _groups_statements(quoted):
            op.execute(statement)
        for name, unique, definition in _INDEXES:
            op.execute(_index_statement(quoted, name, unique, definition, concurrently=False))
        return
    bind = op.get_bind()

    def add_columns_and_table() -> None:
        for table, columns in ((_MESSAGES, _MESSAGE_COLUMNS), (_ARCHIVE, _ARCHIVE_COLUMNS)):
            if _missing_columns(bind, schema, table, columns):
                bind.execute(sa.text(_add_columns(quoted, table, columns)))
        if not _exists(bind, schema, _GROUPS):
            for statement in _groups_statements(quoted):
                bind.execute(sa.text(statement))

    retry_on_lock_timeout(bind, add_columns_and_table)
    missing = [index for index in _INDEXES if _index_state(bind, schema, index[0]) != "valid"]
    if not missing:
        return  # prepare_online() built them concurrently
    live = bind.execute(sa.text(
        f"SELECT count(*) FROM (SELECT 1 FROM {quoted}.{_MESSAGES} LIMIT {BIG_TABLE + 1}) t"
    )).scalar_one()
    if live > BIG_TABLE:
        log.warning(
            "pgqrs migration %s: building %d index(es) on %s (over %d live messages) inside "
            "this transaction; enqueues and acks wait until it commits. To build them "
            "concurrently instead, upgrade on a connection pgqrs owns (`pgqrs install` or "
            "Admin.install() without connection=)", revision, len(missing), _MESSAGES,
            BIG_TABLE)

    def build() -> None:
        for name, unique, definition in missing:
            if _index_state(bind, schema, name) == "invalid":
                bind.execute(sa.text(f'DROP INDEX {quoted}."{name}"'))
            bind.execute(sa.text(_index_statement(quoted, name, unique, definition,
                                                  concurrently=False)))

    retry_on_lock_timeout(bind, build)


def prepare_online(connection: sa.Connection, schema: str) -> None:
    """Do this revision's slow steps outside any transaction, before ``upgrade()`` runs.

    ``pgqrs.migrate.prepare_sync`` calls it on an autocommit connection, holding the
    install advisory lock, when the database is at an earlier revision. Columns and the
    groups table first (each statement under ``lock_timeout``, retried), then every index
    that is missing or INVALID, ``CONCURRENTLY``: enqueues and acks go on meanwhile. Safe
    to run again after an interruption, and a no-op once done.
    """
    quoted = connection.dialect.identifier_preparer.quote_schema(schema)
    if not _exists(connection, schema, _MESSAGES):
        return
    previous = connection.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar_one()
    connection.execute(sa.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    try:
        for table, columns in ((_MESSAGES, _MESSAGE_COLUMNS), (_ARCHIVE, _ARCHIVE_COLUMNS)):
            if _missing_columns(connection, schema, table, columns):
                _retry_autocommit(connection, _add_columns(quoted, table, columns))
        for statement in _groups_statements(quoted):
            _retry_autocommit(connection, statement)
    finally:
        # A concurrent build waits for older transactions (it blocks no one meanwhile), so
        # it must not give up after LOCK_TIMEOUT like the ALTERs above.
        connection.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"),
                           {"v": previous})
    for name, unique, definition in _INDEXES:
        state = _index_state(connection, schema, name)
        if state == "valid":
            continue
        if state == "invalid":
            log.warning("pgqrs migration %s: dropping the unfinished index %s of an "
                        "interrupted build, then building it again", revision, name)
            connection.execute(sa.text(f'DROP INDEX CONCURRENTLY IF EXISTS {quoted}."{name}"'))
        log.info("pgqrs migration %s: building index %s concurrently", revision, name)
        connection.execute(sa.text(_index_statement(quoted, name, unique, definition,
                                                    concurrently=True)))


def downgrade() -> None:
    schema = migration_schema()
    quoted = op.get_context().dialect.identifier_preparer.quote_schema(schema)

    def drop() -> None:
        for name, _, _ in reversed(_INDEXES):
            op.execute(f'DROP INDEX IF EXISTS {quoted}."{name}"')
        op.execute(f"DROP TABLE IF EXISTS {quoted}.{_GROUPS}")
        for table, columns in ((_ARCHIVE, _ARCHIVE_COLUMNS), (_MESSAGES, _MESSAGE_COLUMNS)):
            op.execute(f"ALTER TABLE {quoted}.{table} "
                       + ", ".join(f"DROP COLUMN IF EXISTS {c}" for c, _ in reversed(columns)))

    run_with_lock_timeout(drop)


# -- DDL text -----------------------------------------------------------------------------


def _add_columns(quoted: str, table: str, columns: tuple[tuple[str, str], ...]) -> str:
    return (f"ALTER TABLE {quoted}.{table} "
            + ", ".join(f"ADD COLUMN IF NOT EXISTS {name} {kind}" for name, kind in columns))


def _column_statements(quoted: str) -> list[str]:
    return [_add_columns(quoted, _MESSAGES, _MESSAGE_COLUMNS),
            _add_columns(quoted, _ARCHIVE, _ARCHIVE_COLUMNS)]


def _groups_statements(quoted: str) -> list[str]:
    """The new (hence empty) groups table and its indexes."""
    return [
        f"CREATE TABLE IF NOT EXISTS {quoted}.{_GROUPS} ("
        "queue_id BIGINT NOT NULL, group_key TEXT NOT NULL, live INTEGER NOT NULL, "
        "needs_head BOOLEAN DEFAULT false NOT NULL, "
        "CONSTRAINT pk_pgqrs_groups PRIMARY KEY (queue_id, group_key), "
        "CONSTRAINT fk_pgqrs_groups_queue_id_pgqrs_queues FOREIGN KEY (queue_id) "
        f"REFERENCES {quoted}.pgqrs_queues (id) ON DELETE CASCADE)",
        f"CREATE INDEX IF NOT EXISTS ix_pgqrs_groups_needs_head ON {quoted}.{_GROUPS} "
        "(queue_id) WHERE needs_head",
        f"CREATE INDEX IF NOT EXISTS ix_pgqrs_groups_empty ON {quoted}.{_GROUPS} "
        "(queue_id) WHERE live = 0",
    ]


def _index_statement(quoted: str, name: str, unique: bool, definition: str, *,
                     concurrently: bool) -> str:
    return (f"CREATE {'UNIQUE ' if unique else ''}INDEX "
            f"{'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS \"{name}\" "
            f"ON {quoted}.{_MESSAGES} {definition}")


# -- catalog ------------------------------------------------------------------------------


def _exists(bind: sa.Connection, schema: str, table: str) -> bool:
    return bool(bind.execute(sa.text("SELECT to_regclass(:n) IS NOT NULL"),
                             {"n": f'"{schema}"."{table}"'}).scalar_one())


def _missing_columns(bind: sa.Connection, schema: str, table: str,
                     columns: tuple[tuple[str, str], ...]) -> list[str]:
    present = set(bind.execute(sa.text(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:n) AND attnum > 0 "
        "AND NOT attisdropped"), {"n": f'"{schema}"."{table}"'}).scalars())
    return [name for name, _ in columns if name not in present]


def _index_state(bind: sa.Connection, schema: str, name: str) -> str:
    """``"valid"``, ``"invalid"`` (an interrupted concurrent build) or ``"missing"``."""
    valid = bind.execute(sa.text(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
        {"n": f'"{schema}"."{name}"'}).scalar_one_or_none()
    return "missing" if valid is None else "valid" if valid else "invalid"


# -- lock timeouts ------------------------------------------------------------------------


def run_with_lock_timeout(step: Callable[[], None]) -> None:
    """Run ``step`` under ``lock_timeout``, retried in a SAVEPOINT while locks are busy.

    Offline (``--sql``) the script just sets the timeout before the step.
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
            _pause(bind, attempt, attempts, pause)
    bind.execute(sa.text("SELECT set_config('lock_timeout', :v, true)"), {"v": previous})


def _retry_autocommit(bind: sa.Connection, statement: str, *, attempts: int = ATTEMPTS,
                      pause: float = PAUSE) -> None:
    """``retry_on_lock_timeout`` for an autocommit connection: each try of ``statement``
    is its own transaction (the session's ``lock_timeout`` is set by the caller)."""
    for attempt in range(1, attempts + 1):
        try:
            bind.execute(sa.text(statement))
            return
        except sa.exc.DBAPIError as exc:
            if _sqlstate(exc) != _LOCK_NOT_AVAILABLE or attempt == attempts:
                raise
            _pause(bind, attempt, attempts, pause)


def _pause(bind: sa.Connection, attempt: int, attempts: int, pause: float) -> None:
    wait = min(pause * 2 ** (attempt - 1), MAX_PAUSE)
    log.warning("pgqrs migration %s: lock not available within %s (try %d of %d); "
                "retrying in %.2fs", revision, LOCK_TIMEOUT, attempt, attempts, wait)
    # Sleep in the server: a blocking time.sleep() would stall the event loop of an
    # application that runs install() inside it.
    bind.execute(sa.text("SELECT pg_sleep(:s)"), {"s": wait})


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
