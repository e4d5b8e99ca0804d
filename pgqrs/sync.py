"""Synchronous entry points for applications that are not async (Flask, Django, scripts).

They take the application's synchronous SQLAlchemy ``Engine`` (any PostgreSQL driver:
psycopg, psycopg2, ...) and run the very same repositories as the async API. Repository
methods are coroutines that only ever await ``executor.execute``; here that call is
answered synchronously by the lent connection, so each coroutine runs to completion in
one step without an event loop (and works inside threads of a sync web server).

Example:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session
    import pgqrs.sync

    engine = create_engine("postgresql+psycopg://localhost/mydb")
    pgqrs.sync.Admin(engine).install()
    producer = pgqrs.sync.Producer(engine, "emails", "web-1", 8000)
    with Session(engine) as session, session.begin():
        session.add(order)
        producer.enqueue({"order_id": order.id}, session=session)  # same transaction
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine, Executable, Result
from sqlalchemy.orm import Session

from pgqrs import _validation, errors, migrate
from pgqrs.repositories import MessageRepository, QueueRepository, WorkerRepository
from pgqrs.settings import Settings
from pgqrs.types import QueueInfo

T = TypeVar("T")


class _SyncExecutor:
    """Looks like an async executor to the repositories; runs on a sync connection."""

    def __init__(self, target: Connection | Session) -> None:
        self._target = target

    async def execute(self, statement: Executable, params: Mapping[str, Any] | None = None,
                      *, execution_options: Mapping[str, Any]) -> Result[Any]:
        return self._target.execute(statement, params, execution_options=execution_options)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (see the module docstring) to completion."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("pgqrs.sync: a repository call tried to suspend")  # a pgqrs bug


class _Base:
    def __init__(self, engine: Engine, options: dict[str, Any]) -> None:
        if not isinstance(engine, Engine):
            raise errors.ConfigurationError(
                f"pgqrs.sync needs a synchronous SQLAlchemy Engine, got {type(engine).__name__}"
                " (use the async classes in pgqrs for an AsyncEngine)"
            )
        if engine.dialect.name != "postgresql":
            raise errors.ConfigurationError(f"pgqrs needs PostgreSQL, not {engine.dialect.name}")
        self.engine = engine
        self.settings = Settings.build(**options)

    @contextlib.contextmanager
    def _transaction(self, lent: Session | Connection | None = None) -> Iterator[Any]:
        if lent is not None:
            if not isinstance(lent, Session | Connection):
                raise errors.ConfigurationError(
                    f"session= must be a Session and connection= a Connection, "
                    f"got {type(lent).__name__}"
                )
            with errors.translate_db_errors():
                yield _SyncExecutor(lent)
            return
        with errors.translate_db_errors(), self.engine.begin() as conn:
            yield _SyncExecutor(conn)


class Admin(_Base):
    """Schema installation and queue creation for synchronous applications."""

    def __init__(self, engine: Engine, *, schema: str | None = None, **options: Any) -> None:
        super().__init__(engine, {"schema": schema, **options})
        self._queues = QueueRepository(self.settings.schema)

    def install(self, *, connection: Connection | None = None) -> None:
        """Upgrade the schema to head under the install lock (see ``pgqrs.Admin.install``)."""
        transaction = (contextlib.nullcontext(connection) if connection is not None
                       else self.engine.begin())
        with errors.translate_db_errors(), transaction as conn:
            migrate.lock_sync(conn)
            migrate.upgrade_sync(conn, self.settings.schema)

    def verify(self) -> str:
        """Check the schema is installed and current; return its revision."""
        with errors.translate_db_errors(), self.engine.connect() as conn:
            return migrate.verify_sync(conn, self.settings.schema)

    def create_queue(self, name: str) -> QueueInfo:
        """Create a queue; a duplicate raises ``QueueAlreadyExistsError``."""
        name = _validation.queue_name(name)
        with self._transaction() as executor:
            return _run(self._queues.create(executor, name, self.settings.queue_policy()))


class Producer(_Base):
    """Enqueue from synchronous code, optionally inside the caller's ``Session``.

    Registers its ``(hostname, port)`` worker row on first use and refreshes its heartbeat
    on later calls (there is no background task in sync code).
    """

    def __init__(self, engine: Engine, queue: str, hostname: str, port: int,
                 **options: Any) -> None:
        super().__init__(engine, options)
        self.queue_name = _validation.queue_name(queue)
        self.hostname, self.port = _validation.worker_identity(hostname, port)
        schema = self.settings.schema
        self._queues = QueueRepository(schema)
        self._workers = WorkerRepository(schema)
        self._messages = MessageRepository(schema)
        self._ids: tuple[int, int] | None = None
        self._token: datetime | None = None
        self._last_beat = 0.0

    @property
    def worker_id(self) -> int | None:
        """This producer's worker row; None until first use."""
        return self._ids[0] if self._ids else None

    def _worker(self) -> tuple[int, int]:
        now = time.monotonic()
        if self._ids is None:
            # Always on our own connection: a caller's rollback must not undo it.
            with self._transaction() as executor:
                queue = _run(self._queues.get(executor, self.queue_name))
                worker_id, token = _run(self._workers.register(
                    executor, hostname=self.hostname, port=self.port, queue_id=queue.id,
                    stale_after=self.settings.stale_threshold))
            self._ids, self._token, self._last_beat = (worker_id, queue.id), token, now
        elif now - self._last_beat > self.settings.heartbeat_interval:
            assert self._token is not None
            with self._transaction() as executor:
                status = _run(self._workers.heartbeat(executor, self._ids[0], self._token))
            if status == "stopped":
                # Marked stopped while idle (sync code has no background heartbeat, so a
                # reclaim may take it for dead): a producer holds no leases, so take the
                # row back rather than fail.
                self._ids = None
                return self._worker()
            self._last_beat = now
        return self._ids

    def enqueue(self, payload: dict[str, Any], *, delay: float | None = None,
                session: Session | None = None, connection: Connection | None = None) -> int:
        """Enqueue one message; with ``session=``/``connection=`` inside that transaction."""
        encoded = _validation.encode_payload(payload, max_bytes=self.settings.max_payload_bytes,
                                             max_depth=self.settings.max_payload_depth)
        seconds = _validation.seconds("delay", delay) if delay is not None else None
        lent = _validation.lent(session, connection)
        worker_id, queue_id = self._worker()
        with self._transaction(lent) as executor:
            return _run(self._messages.enqueue(executor, queue_id=queue_id, payload=encoded,
                                               delay=seconds, worker_id=worker_id))

    def enqueue_batch(self, payloads: Sequence[dict[str, Any]], *, delay: float | None = None,
                      session: Session | None = None,
                      connection: Connection | None = None) -> list[int]:
        """Enqueue many messages in one statement; ids in input order."""
        encoded = _validation.encode_batch(payloads, max_bytes=self.settings.max_payload_bytes,
                                           max_depth=self.settings.max_payload_depth)
        seconds = _validation.seconds("delay", delay) if delay is not None else None
        lent = _validation.lent(session, connection)
        if not encoded:
            return []
        worker_id, queue_id = self._worker()
        with self._transaction(lent) as executor:
            return _run(self._messages.enqueue_batch(
                executor, queue_id=queue_id, payloads=encoded, delay=seconds,
                worker_id=worker_id))

    def close(self) -> None:
        """Mark the worker stopped. Idempotent; the engine is the application's."""
        if self._ids is None:
            return
        from pgqrs.types import WorkerStatus

        with contextlib.suppress(errors.PgqrsError), self._transaction() as executor:
            _run(self._workers.transition(
                executor, self._ids[0], allowed_from=(WorkerStatus.READY, WorkerStatus.SUSPENDED),
                to=WorkerStatus.STOPPED))
        self._ids = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
