"""Producer: puts messages on a queue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from pgqrs import _validation
from pgqrs._worker import WorkerClient
from pgqrs.types import WorkerStatus

if TYPE_CHECKING:
    from pgqrs.admin import Admin

_CAN_ENQUEUE = (WorkerStatus.READY, WorkerStatus.SUSPENDED)


class Producer(WorkerClient):
    """Enqueues JSON messages to one queue.

    Construction does no I/O; the worker row is registered on first use. Use it as an
    async context manager, or call ``close()`` when done.

    Example:
        async with Producer(dsn, "tasks", "api-server", 8000) as producer:
            message_id = await producer.enqueue({"action": "send_email"})

    Args:
        dsn: a PostgreSQL URL (``postgresql://``, ``postgres://``, ``postgresql+asyncpg://``),
            the application's ``AsyncEngine`` (shared, never disposed), or an ``Admin``
            whose engine and settings to share (the original binding's style).
        queue: name of an existing queue.
        hostname: worker identity, with ``port``; unique among live workers.
        port: worker identity, with ``hostname``.
        **options: ``Settings`` options (``schema``, ``max_payload_bytes``, ``rate_limit``, ...).
    """

    def __init__(self, dsn: str | AsyncEngine | Admin, queue: str, hostname: str, port: int,
                 **options: Any) -> None:
        super().__init__(dsn, queue, hostname, port, **options)
        rate = self.settings.rate_limit
        self._bucket = (_validation.TokenBucket(rate, self.settings.rate_burst)
                        if rate is not None else None)

    def _encode(self, payload: object) -> str:
        return _validation.encode_payload(payload, max_bytes=self.settings.max_payload_bytes,
                                          max_depth=self.settings.max_payload_depth)

    async def enqueue(self, payload: dict[str, Any], *, delay: float | None = None,
                      session: AsyncSession | None = None,
                      connection: AsyncConnection | None = None) -> int:
        """Enqueue one message and return its id.

        Args:
            payload: a JSON-serialisable dict.
            delay: seconds before the message becomes visible to consumers.
            session: enqueue inside this session's transaction (never committed by pgqrs).
            connection: enqueue inside this connection's transaction.

        Raises:
            ValidationError: the payload or delay was rejected; nothing was written.
            QueueNotFoundError: the queue does not exist.
            StateError: the producer was shut down.
            DatabaseError: the database failed (``DatabaseUnavailableError`` if unreachable).
        """
        encoded = self._encode(payload)
        seconds = _validation.seconds("delay", delay) if delay is not None else None
        lent = _validation.lent(session, connection)
        worker_id, queue_id = await self._ids("enqueue", *_CAN_ENQUEUE)
        if self._bucket is not None:
            await self._bucket.acquire()
        async with self._db.statement(lent) as conn:
            return await self._messages.enqueue(conn, queue_id=queue_id, payload=encoded,
                                                delay=seconds, worker_id=worker_id)

    async def enqueue_delayed(self, payload: dict[str, Any], delay_seconds: float) -> int:
        """Enqueue one message that stays invisible for ``delay_seconds``; return its id."""
        return await self.enqueue(payload, delay=delay_seconds)

    async def enqueue_batch(self, payloads: Sequence[dict[str, Any]], *,
                            delay: float | None = None, session: AsyncSession | None = None,
                            connection: AsyncConnection | None = None) -> list[int]:
        """Enqueue many messages in one statement: all or nothing, ids in input order.

        Every payload is validated before any SQL runs. An empty list returns ``[]``.

        Raises:
            ValidationError: a payload (its index is named) or the delay was rejected.
        """
        encoded = _validation.encode_batch(payloads, max_bytes=self.settings.max_payload_bytes,
                                           max_depth=self.settings.max_payload_depth)
        seconds = _validation.seconds("delay", delay) if delay is not None else None
        lent = _validation.lent(session, connection)
        if not encoded:
            return []
        worker_id, queue_id = await self._ids("enqueue", *_CAN_ENQUEUE)
        if self._bucket is not None:
            await self._bucket.acquire(len(encoded))
        async with self._db.statement(lent) as conn:
            return await self._messages.enqueue_batch(
                conn, queue_id=queue_id, payloads=encoded, delay=seconds, worker_id=worker_id
            )
