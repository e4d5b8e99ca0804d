"""Producer: puts messages on a queue."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from pgqrs import _tracing, _validation
from pgqrs._worker import WorkerClient
from pgqrs.types import NewMessage, WorkerStatus

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
            await producer.enqueue({"invoice": 42}, priority=10, dedup_key="invoice-42",
                                   group="customer-17", headers={"tenant": "acme"})

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

    async def enqueue(self, payload: dict[str, Any], *, delay: float | None = None,
                      priority: int = 0, dedup_key: str | None = None,
                      headers: Mapping[str, str] | None = None, group: str | None = None,
                      session: AsyncSession | None = None,
                      connection: AsyncConnection | None = None) -> int:
        """Enqueue one message and return its id.

        Args:
            payload: a JSON-serialisable dict.
            delay: seconds before the message becomes visible to consumers.
            priority: higher is claimed first (-32768 to 32767); FIFO within a priority.
            dedup_key: while a message with this key is live in the queue (waiting,
                delayed or leased), return that message's id and write nothing; once it
                is archived (or deleted, or dead-lettered) the key is free again.
            headers: a small ``str -> str`` map kept apart from the payload (trace
                context, tenant); at most 64 entries and 16 KiB.
            group: an ordered group: its messages are delivered in enqueue order, one at
                a time (the next waits until the previous leaves the queue).
            session: enqueue inside this session's transaction (never committed by pgqrs).
            connection: enqueue inside this connection's transaction.

        Raises:
            ValidationError: the payload or an option was rejected; nothing was written.
            QueueNotFoundError: the queue does not exist.
            StateError: the producer was shut down.
            DatabaseError: the database failed (``DatabaseUnavailableError`` if unreachable);
                inside a REPEATABLE READ or SERIALIZABLE transaction, also a serialization
                failure when a concurrent enqueue took the same key or group: retry.
        """
        # pgqrs.otel.instrument(): a PRODUCER span, its context added to the headers.
        with _tracing.sending(self.queue_name, 1) as trace:
            settings = self.settings
            encoded = _validation.encode_payload(payload, max_bytes=settings.max_payload_bytes,
                                                 max_depth=settings.max_payload_depth)
            options = _validation.options(priority=priority, headers=trace.inject(headers),
                                          group=group, dedup_key=dedup_key, delay=delay)
            lent = (None if session is None and connection is None
                    else _validation.lent(session, connection))
            worker_id, queue_id = await self._ids("enqueue", *_CAN_ENQUEUE)
            if self._bucket is not None:
                await self._bucket.acquire()
            # A grouped message with a key takes several statements: one transaction.
            several = options.group is not None and options.dedup_key is not None
            scope = self._db.transaction(lent) if several else self._db.statement(lent)
            async with scope as conn:
                message_id = await self._messages.enqueue(
                    conn, queue_id=queue_id, payload=encoded, options=options,
                    worker_id=worker_id)
            if trace is not _tracing.UNTRACED:
                trace.sent([message_id])
            return message_id

    async def enqueue_delayed(self, payload: dict[str, Any], delay_seconds: float) -> int:
        """Enqueue one message that stays invisible for ``delay_seconds``; return its id."""
        return await self.enqueue(payload, delay=delay_seconds)

    async def enqueue_batch(self, payloads: Sequence[dict[str, Any] | NewMessage], *,
                            delay: float | None = None, priority: int = 0,
                            headers: Mapping[str, str] | None = None, group: str | None = None,
                            session: AsyncSession | None = None,
                            connection: AsyncConnection | None = None) -> list[int]:
        """Enqueue many messages at once: all or nothing, ids in input order.

        Each item is a payload dict, which takes the batch's options (``delay``,
        ``priority``, ``headers``, ``group``), or a ``NewMessage`` with options of its own
        (its ``None`` fields take the batch's). Dedup keys are per message: a key that
        repeats in the batch, or that a live message holds already, gives that message's
        id at each of its positions and writes nothing for them; the rest of the batch is
        enqueued. Messages of one group keep their order in the batch.

        Every item is validated before any SQL runs. An empty list returns ``[]``.

        Example:
            ids = await producer.enqueue_batch([
                NewMessage({"step": 1}, group="order-42", dedup_key="order-42/1"),
                NewMessage({"step": 2}, group="order-42"),
            ], priority=5)

        Raises:
            ValidationError: an item (its index is named) or an option was rejected.
        """
        count = len(payloads) if isinstance(payloads, Sequence) else 0  # 0: no span
        with _tracing.sending(self.queue_name, count) as trace:
            defaults = _validation.options(priority=priority, headers=trace.inject(headers),
                                           group=group, delay=delay)
            items = _validation.batch_items(
                trace.inject_each(payloads), max_bytes=self.settings.max_payload_bytes,
                max_depth=self.settings.max_payload_depth, defaults=defaults)
            lent = _validation.lent(session, connection)
            if not items:
                return []
            worker_id, queue_id = await self._ids("enqueue", *_CAN_ENQUEUE)
            if self._bucket is not None:
                await self._bucket.acquire(len(items))
            # Dict items carry ``defaults`` itself: identity settles most without comparing.
            if defaults.group is None and all(i.options is defaults or i.options == defaults
                                              for i in items):
                async with self._db.statement(lent) as conn:
                    return await self._messages.enqueue_batch(
                        conn, queue_id=queue_id, payloads=[i.payload for i in items],
                        options=defaults, worker_id=worker_id)
            # Keys may need a second statement (and keys with groups take three): keep the
            # batch all or nothing in one transaction.
            keyed = any(i.options.dedup_key is not None for i in items)
            scope = self._db.transaction(lent) if keyed else self._db.statement(lent)
            async with scope as conn:
                return await self._messages.enqueue_items(conn, queue_id=queue_id,
                                                          items=items, worker_id=worker_id)
