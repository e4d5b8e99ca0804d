"""``pgqrs.sync.Producer``: the async ``Producer``, run on the application's ``Engine``."""

from __future__ import annotations

import threading
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from pgqrs import producer
from pgqrs.settings import Settings
from pgqrs.sync import _db, _loop
from pgqrs.types import NewMessage, WorkerStatus

T = TypeVar("T")


class Producer:
    """Enqueue from synchronous code, optionally inside the caller's ``Session``.

    The same client as ``pgqrs.Producer`` (every method is its synchronous twin), on the
    application's synchronous ``Engine``: any PostgreSQL driver (psycopg, psycopg2, ...).
    It registers its ``(hostname, port)`` worker row on first use, always on a connection
    of its own (a rollback of the caller's transaction never undoes it). With no
    background task in sync code, it records a heartbeat on the first call that comes a
    ``heartbeat_interval`` after the last one, and takes its row back if a reclaim marked
    it stopped while idle (a producer holds no leases).

    One ``Producer`` may be shared by the threads of a synchronous web server.

    Example:
        producer = pgqrs.sync.Producer(engine, "emails", "web-1", 8000)
        with Session(engine) as session, session.begin():
            session.add(order)
            producer.enqueue({"order_id": order.id}, session=session)  # same transaction

    Args:
        engine: the application's synchronous SQLAlchemy ``Engine`` (never disposed).
        queue: name of an existing queue.
        hostname: worker identity, with ``port``; unique among live workers.
        port: worker identity, with ``hostname``.
        **options: ``Settings`` options (``schema``, ``max_payload_bytes``, ``rate_limit``, ...).
    """

    def __init__(self, engine: Engine, queue: str, hostname: str, port: int,
                 **options: Any) -> None:
        self._core = producer.Producer(_db.as_dsn(engine), queue, hostname, port, **options)
        self.engine = engine
        """The application's engine."""
        # The core's rate limiter paces with an asyncio lock, which the threads' separate
        # event loops cannot share: with a rate limit, calls run one at a time.
        self._serial = threading.Lock() if self.settings.rate_limit is not None else None

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        if self._serial is None:
            return _loop.run(call)
        with self._serial:
            return _loop.run(call)

    def __repr__(self) -> str:
        return f"pgqrs.sync.{self._core!r}"

    @property
    def settings(self) -> Settings:
        """This producer's options."""
        return self._core.settings

    @property
    def queue_name(self) -> str:
        """The queue this producer enqueues to."""
        return self._core.queue_name

    @property
    def hostname(self) -> str:
        """Worker identity, with ``port``."""
        return self._core.hostname

    @property
    def port(self) -> int:
        """Worker identity, with ``hostname``."""
        return self._core.port

    @property
    def worker_id(self) -> int | None:
        """This producer's worker row; None until first use (or ``register()``)."""
        return self._core.worker_id

    def enqueue(self, payload: dict[str, Any], *, delay: float | None = None,
                priority: int = 0, dedup_key: str | None = None,
                headers: Mapping[str, str] | None = None, group: str | None = None,
                session: Session | None = None, connection: Connection | None = None) -> int:
        """Enqueue one message; with ``session=``/``connection=`` inside that transaction.

        See ``pgqrs.Producer.enqueue`` (priority, dedup key, headers, ordered group); pgqrs
        never commits what it was lent.
        """
        return self._run(self._core.enqueue(
            payload, delay=delay, priority=priority, dedup_key=dedup_key, headers=headers,
            group=group, session=_db.lent(session), connection=_db.lent(connection)))

    def enqueue_delayed(self, payload: dict[str, Any], delay_seconds: float) -> int:
        """Enqueue one message that stays invisible for ``delay_seconds``; return its id."""
        return self._run(self._core.enqueue_delayed(payload, delay_seconds))

    def enqueue_batch(self, payloads: Sequence[dict[str, Any] | NewMessage], *,
                      delay: float | None = None, priority: int = 0,
                      headers: Mapping[str, str] | None = None, group: str | None = None,
                      session: Session | None = None,
                      connection: Connection | None = None) -> list[int]:
        """Enqueue many messages at once: all or nothing, ids in input order.

        See ``pgqrs.Producer.enqueue_batch`` (payload dicts or ``NewMessage`` items).
        """
        return self._run(self._core.enqueue_batch(
            payloads, delay=delay, priority=priority, headers=headers, group=group,
            session=_db.lent(session), connection=_db.lent(connection)))

    def register(self) -> int:
        """Register now rather than on first use; return the worker id."""
        return self._run(self._core.register())

    def heartbeat(self) -> None:
        """Record a heartbeat now."""
        return self._run(self._core.heartbeat())

    def status(self) -> WorkerStatus:
        """The worker's status as stored in the database."""
        return self._run(self._core.status())

    def is_healthy(self, max_age: float) -> bool:
        """True if the worker is not stopped and beat within the last ``max_age`` seconds."""
        return self._run(self._core.is_healthy(max_age))

    def suspend(self) -> None:
        """Ready → suspended."""
        return self._run(self._core.suspend())

    def resume(self) -> None:
        """Suspended → ready."""
        return self._run(self._core.resume())

    def shutdown(self) -> None:
        """Ready or suspended → stopped; the producer cannot be used afterwards."""
        return self._run(self._core.shutdown())

    def close(self, *, release_held: bool = True) -> None:
        """Mark the worker stopped. Idempotent; the engine is the application's."""
        return self._run(self._core.close(release_held=release_held))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
