"""A lean hot path: no foreign keys on ``pgqrs_messages``, fewer indexes on both hot tables.

Revision ID: pgqrs_0005
Revises: pgqrs_0004
Create Date: 2026-11-29

What every enqueue, claim and acknowledgement paid for, measured per statement with
``python -m benchmarks.studies.schema_cost`` (figures in docs/benchmarks.md):

- The three foreign keys of ``pgqrs_messages`` (queue, producer worker, consumer worker):
  one referential-integrity trigger per inserted row (half of a 100-message batch's server
  time) and one per claimed row. What replaces each is in docs/reliability.md
  ("What the schema guarantees, and how"): enqueues lock their queue row once per
  statement, the code paths that delete workers clear their ids from live messages, and
  worker ids come from an identity, so a stale one never passes the acknowledgement fence.
- The indexes on ``pgqrs_messages.consumer_worker_id`` and ``producer_worker_id``: every
  enqueue wrote an entry in each (NULL included), every claim one more in the first. No
  query looks messages up by producer. The messages a worker holds (its release, the
  dashboard's and ``held_count``'s counts, a registration's takeover) are found through
  ``ix_pgqrs_messages_held`` instead, a partial index of the held messages only: no entry
  per enqueue, one per claim.
- Three of the five secondary indexes of ``pgqrs_archive`` (``original_msg_id``,
  ``producer_worker_id``, ``consumer_worker_id``): no query of pgqrs's uses the first two;
  the archive's listing by worker is a rare administrative query. ``(queue_id, id)``
  (pages, retention purge) and ``archived_at`` (the dashboard's throughput chart) stay.

Written to run while producers and consumers keep working (see "How to write a pgqrs
migration" in docs/guides/alembic.md):

- Dropping a foreign key takes a brief ACCESS EXCLUSIVE lock on ``pgqrs_messages`` and a
  SHARE ROW EXCLUSIVE one on the table it references; nothing is rewritten. Each drop runs
  under ``lock_timeout`` and is retried (as in ``pgqrs_0002``).
- A plain ``DROP INDEX`` needs ACCESS EXCLUSIVE on the table until the transaction ends.
  So, as ``pgqrs_0003`` does for its index builds, ``prepare_online()`` (which
  ``pgqrs.migrate`` calls on an autocommit connection whenever pgqrs owns the connection)
  drops the foreign keys one statement at a time and the indexes ``CONCURRENTLY``, before
  the upgrade's transaction; ``upgrade()`` then finds nothing left to do but record the
  revision. An interrupted ``DROP INDEX CONCURRENTLY`` leaves an INVALID index, which the
  next run drops (``IF EXISTS`` everywhere).
  The partial index is built there too, first, ``CONCURRENTLY`` (an INVALID leftover of an
  interrupted build is dropped and built again).
- Without that step (a fresh install, ``Admin.install(connection=...)``, a host's own env,
  the ``--sql`` script) ``upgrade()`` does it all in its transaction, under
  ``lock_timeout``; dropping is instant whatever the table's size, and the partial index
  holds only leased messages (a warning says when the live table is big, as writes wait
  for the build).
- ``downgrade()`` restores every index and foreign key. Worker ids that no longer name a
  worker are set to NULL first (what the old ``ON DELETE SET NULL`` would have done), so
  the constraints validate. Each foreign key is added ``NOT VALID`` and then validated.
  Indexes are built inside the transaction (writes wait for the build; a warning says so
  on a big table); ``restore_online()`` does the same work concurrently beforehand, for
  those who downgrade a live system.

Until released, the revision id lives in ``revision`` below only (the tests import it).
The retry helper is a copy of pgqrs_0002's, frozen with this file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from pgqrs.migrate import migration_schema

revision: str = "pgqrs_0005"
down_revision: str | Sequence[str] | None = "pgqrs_0004"
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
"""Rows above which building an index inside a transaction (downgrade) earns a warning."""

_LOCK_NOT_AVAILABLE = "55P03"
_MESSAGES = "pgqrs_messages"
_ARCHIVE = "pgqrs_archive"
# (name, column, referenced table, ON DELETE clause): the foreign keys of pgqrs_0001.
FOREIGN_KEYS = (
    ("fk_pgqrs_messages_queue_id_pgqrs_queues", "queue_id", "pgqrs_queues", ""),
    ("fk_pgqrs_messages_producer_worker_id_pgqrs_workers", "producer_worker_id",
     "pgqrs_workers", " ON DELETE SET NULL"),
    ("fk_pgqrs_messages_consumer_worker_id_pgqrs_workers", "consumer_worker_id",
     "pgqrs_workers", " ON DELETE SET NULL"),
)
HELD_INDEX = ("ix_pgqrs_messages_held",
              "(consumer_worker_id) WHERE consumer_worker_id IS NOT NULL")
"""The partial index that replaces ``ix_pgqrs_messages_consumer_worker_id``."""
# (name, table, column): the single-column indexes of pgqrs_0001 this revision drops.
INDEXES = (
    ("ix_pgqrs_messages_consumer_worker_id", _MESSAGES, "consumer_worker_id"),
    ("ix_pgqrs_messages_producer_worker_id", _MESSAGES, "producer_worker_id"),
    ("ix_pgqrs_archive_original_msg_id", _ARCHIVE, "original_msg_id"),
    ("ix_pgqrs_archive_producer_worker_id", _ARCHIVE, "producer_worker_id"),
    ("ix_pgqrs_archive_consumer_worker_id", _ARCHIVE, "consumer_worker_id"),
)

log = logging.getLogger("pgqrs.migrations")


def upgrade() -> None:
    schema = migration_schema()
    context = op.get_context()
    quoted = context.dialect.identifier_preparer.quote_schema(schema)
    if context.as_sql:
        # The reviewable script: every step, in one transaction, re-runnable.
        op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        op.execute(_held_statement(quoted, concurrently=False))
        for statement in _drop_statements(quoted, concurrently=False):
            op.execute(statement)
        return
    bind = op.get_bind()
    build = _index_state(bind, schema, HELD_INDEX[0]) != "valid"
    if not build and not _remaining(bind, schema):
        return  # prepare_online() did it all
    if build:
        live = bind.execute(sa.text(
            f"SELECT count(*) FROM (SELECT 1 FROM {quoted}.{_MESSAGES} "
            f"LIMIT {BIG_TABLE + 1}) t")).scalar_one()
        if live > BIG_TABLE:
            log.warning(
                "pgqrs migration %s: building index %s on %s (over %d live messages) inside "
                "this transaction; enqueues and acks wait until it commits. To build it "
                "concurrently instead, upgrade on a connection pgqrs owns (`pgqrs install` "
                "or Admin.install() without connection=)", revision, HELD_INDEX[0],
                _MESSAGES, BIG_TABLE)

    def drop() -> None:
        if _index_state(bind, schema, HELD_INDEX[0]) == "invalid":
            bind.execute(sa.text(f'DROP INDEX {quoted}."{HELD_INDEX[0]}"'))
        bind.execute(sa.text(_held_statement(quoted, concurrently=False)))
        for statement in _drop_statements(quoted, concurrently=False):
            bind.execute(sa.text(statement))

    retry_on_lock_timeout(bind, drop)


def prepare_online(connection: sa.Connection, schema: str) -> None:
    """Do this revision's work outside any transaction, before ``upgrade()`` runs.

    ``pgqrs.migrate.prepare_sync`` calls it on an autocommit connection, holding the
    install advisory lock, when the database is at an earlier revision. First the partial
    index of held messages, ``CREATE INDEX CONCURRENTLY``; then each foreign key drop, its
    own short transaction under ``lock_timeout`` (retried); then each index, ``DROP INDEX
    CONCURRENTLY``. The concurrent steps wait for the transactions using the table without
    blocking new ones. Safe to run again after an interruption (an INVALID leftover is
    dropped, and the held index built again), and a no-op once done.
    """
    quoted = connection.dialect.identifier_preparer.quote_schema(schema)
    if not _exists(connection, schema, _MESSAGES):
        return
    # The replacement first, so that releases by worker never lose their index.
    state = _index_state(connection, schema, HELD_INDEX[0])
    if state == "invalid":
        log.warning("pgqrs migration %s: dropping the unfinished index %s of an interrupted "
                    "build, then building it again", revision, HELD_INDEX[0])
        connection.execute(sa.text(
            f'DROP INDEX CONCURRENTLY IF EXISTS {quoted}."{HELD_INDEX[0]}"'))
    if state != "valid":
        log.info("pgqrs migration %s: building index %s concurrently", revision,
                 HELD_INDEX[0])
        connection.execute(sa.text(_held_statement(quoted, concurrently=True)))
    if not _remaining(connection, schema):
        return
    previous = connection.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar_one()
    connection.execute(sa.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    try:
        for name, _, _, _ in FOREIGN_KEYS:
            _retry_autocommit(connection, _drop_foreign_key(quoted, name))
    finally:
        # A concurrent drop waits for older transactions (it blocks no one meanwhile), so
        # it must not give up after LOCK_TIMEOUT like the ALTERs above.
        connection.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"),
                           {"v": previous})
    for name, _, _ in INDEXES:
        state = _index_state(connection, schema, name)
        if state == "invalid":
            log.warning("pgqrs migration %s: finishing the interrupted drop of index %s",
                        revision, name)
        if state != "missing":
            log.info("pgqrs migration %s: dropping index %s concurrently", revision, name)
            connection.execute(sa.text(f'DROP INDEX CONCURRENTLY IF EXISTS {quoted}."{name}"'))


def downgrade() -> None:
    schema = migration_schema()
    context = op.get_context()
    quoted = context.dialect.identifier_preparer.quote_schema(schema)
    if context.as_sql:
        op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for statement in _restore_statements(quoted, concurrently=False):
            op.execute(statement)
        op.execute(f'DROP INDEX IF EXISTS {quoted}."{HELD_INDEX[0]}"')
        return
    bind = op.get_bind()
    missing = [i for i in INDEXES if _index_state(bind, schema, i[0]) != "valid"]
    if missing:
        rows = bind.execute(sa.text(
            f"SELECT count(*) FROM (SELECT 1 FROM {quoted}.{_ARCHIVE} "
            f"LIMIT {BIG_TABLE + 1}) t")).scalar_one()
        if rows > BIG_TABLE:
            log.warning(
                "pgqrs migration %s: building %d index(es) inside this transaction (over %d "
                "archived rows); writes wait until it commits. To build them concurrently, "
                "run the revision's restore_online() on an autocommit connection first",
                revision, len(missing), BIG_TABLE)

    def restore() -> None:
        for name, _, _ in missing:
            if _index_state(bind, schema, name) == "invalid":
                bind.execute(sa.text(f'DROP INDEX {quoted}."{name}"'))
        for statement in _restore_statements(quoted, concurrently=False):
            bind.execute(sa.text(statement))
        bind.execute(sa.text(f'DROP INDEX IF EXISTS {quoted}."{HELD_INDEX[0]}"'))

    retry_on_lock_timeout(bind, restore)


def restore_online(connection: sa.Connection, schema: str) -> None:
    """Do ``downgrade()``'s slow work on a live database, before running it.

    On an autocommit connection: the indexes ``CONCURRENTLY`` (an INVALID leftover of an
    interrupted build is dropped and built again), the dangling worker ids cleared, each
    foreign key added ``NOT VALID`` (a brief lock, under ``lock_timeout``, retried) and then
    validated, which blocks no enqueue or claim; last, the partial index of held messages
    goes ``CONCURRENTLY``. ``downgrade()`` then finds everything in place. Re-runnable.
    """
    quoted = connection.dialect.identifier_preparer.quote_schema(schema)
    for name, _, _ in INDEXES:
        if _index_state(connection, schema, name) == "invalid":
            connection.execute(sa.text(f'DROP INDEX CONCURRENTLY IF EXISTS {quoted}."{name}"'))
    for statement in _index_statements(quoted, concurrently=True):
        connection.execute(sa.text(statement))
    previous = connection.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar_one()
    connection.execute(sa.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    try:
        for statement in _foreign_key_statements(quoted):
            _retry_autocommit(connection, statement)
    finally:
        connection.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"),
                           {"v": previous})
    connection.execute(sa.text(f'DROP INDEX CONCURRENTLY IF EXISTS {quoted}."{HELD_INDEX[0]}"'))


# -- DDL text -----------------------------------------------------------------------------


def _held_statement(quoted: str, *, concurrently: bool) -> str:
    name, definition = HELD_INDEX
    return (f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS "
            f'"{name}" ON {quoted}.{_MESSAGES} {definition}')


def _drop_foreign_key(quoted: str, name: str) -> str:
    return f'ALTER TABLE {quoted}.{_MESSAGES} DROP CONSTRAINT IF EXISTS "{name}"'


def _drop_statements(quoted: str, *, concurrently: bool) -> list[str]:
    how = "CONCURRENTLY " if concurrently else ""
    return ([_drop_foreign_key(quoted, name) for name, _, _, _ in FOREIGN_KEYS]
            + [f'DROP INDEX {how}IF EXISTS {quoted}."{name}"' for name, _, _ in INDEXES])


def _index_statements(quoted: str, *, concurrently: bool) -> list[str]:
    how = "CONCURRENTLY " if concurrently else ""
    return [f'CREATE INDEX {how}IF NOT EXISTS "{name}" ON {quoted}.{table} ({column})'
            for name, table, column in INDEXES]


def _foreign_key_statements(quoted: str) -> list[str]:
    """Clear dangling worker ids, then add each foreign key NOT VALID and validate it.

    Every step is re-runnable: the ``DO`` block adds a constraint only if it is absent.
    A message whose queue is gone (which pgqrs never leaves) fails the validation: the
    downgrade stops there and says which constraint, rather than dropping messages.
    """
    out = []
    for _, column, referenced, _ in FOREIGN_KEYS[1:]:
        out.append(f"UPDATE {quoted}.{_MESSAGES} m SET {column} = NULL WHERE {column} IS NOT "
                   f"NULL AND NOT EXISTS (SELECT 1 FROM {quoted}.{referenced} w "
                   f"WHERE w.id = m.{column})")
    for name, column, referenced, on_delete in FOREIGN_KEYS:
        add = (f"ALTER TABLE {quoted}.{_MESSAGES} ADD CONSTRAINT \"{name}\" FOREIGN KEY "
               f"({column}) REFERENCES {quoted}.{referenced} (id){on_delete} NOT VALID")
        out.append("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = "
                   f"'{name}' AND conrelid = '{quoted}.{_MESSAGES}'::regclass) THEN "
                   f"{add}; END IF; END $$")
        out.append(f'ALTER TABLE {quoted}.{_MESSAGES} VALIDATE CONSTRAINT "{name}"')
    return out


def _restore_statements(quoted: str, *, concurrently: bool) -> list[str]:
    return _index_statements(quoted, concurrently=concurrently) + _foreign_key_statements(
        quoted)


# -- catalog ------------------------------------------------------------------------------


def _exists(bind: sa.Connection, schema: str, table: str) -> bool:
    return bool(bind.execute(sa.text("SELECT to_regclass(:n) IS NOT NULL"),
                             {"n": f'"{schema}"."{table}"'}).scalar_one())


def _index_state(bind: sa.Connection, schema: str, name: str) -> str:
    """``"valid"``, ``"invalid"`` (an interrupted concurrent build or drop) or ``"missing"``."""
    valid = bind.execute(sa.text(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
        {"n": f'"{schema}"."{name}"'}).scalar_one_or_none()
    return "missing" if valid is None else "valid" if valid else "invalid"


def _remaining(bind: sa.Connection, schema: str) -> list[str]:
    """The foreign keys and indexes this revision drops that are still there."""
    keys = set(bind.execute(sa.text(
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:n) "
        "AND contype = 'f'"), {"n": f'"{schema}"."{_MESSAGES}"'}).scalars())
    return ([name for name, _, _, _ in FOREIGN_KEYS if name in keys]
            + [name for name, _, _ in INDEXES if _index_state(bind, schema, name) != "missing"])


# -- lock timeouts ------------------------------------------------------------------------


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
