"""Consumer: claims messages under a lease and acknowledges them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from pgqrs import _validation, errors
from pgqrs._worker import WorkerClient
from pgqrs.types import QueueMessage, WorkerStatus

_READY_ONLY = (WorkerStatus.READY,)
_LIVE = (WorkerStatus.READY, WorkerStatus.SUSPENDED)


class Consumer(WorkerClient):
    """Claims messages from one queue with a visibility timeout (lease), at least once.

    A claimed message is invisible to other consumers until its lease ends; then it can
    be claimed again (``read_ct`` counts deliveries). Only the current holder can archive,
    delete, extend or release it. A message delivered ``max_read_ct`` times is a dead
    letter: never delivered again until ``Admin.dlq()`` archives it and
    ``Admin.replay_dlq()`` puts it back.

    Example::

        async with Consumer(dsn, "tasks", "worker-1", 4000) as consumer:
            for message in await consumer.dequeue(limit=10):
                await handle(message.payload)
                await consumer.archive(message.id)

    Args:
        dsn: a PostgreSQL URL or the application's ``AsyncEngine``.
        queue: name of an existing queue.
        hostname: worker identity, with ``port``.
        port: worker identity, with ``hostname``.
        visibility_timeout: default lease in seconds.
        max_read_ct: deliveries after which a message is a dead letter.
        **options: ``Settings`` options (``schema``, ``heartbeat_interval``, ...).
    """

    def __init__(self, dsn: str | AsyncEngine, queue: str, hostname: str, port: int, *,
                 visibility_timeout: float = 30, max_read_ct: int = 5,
                 **options: Any) -> None:
        super().__init__(dsn, queue, hostname, port, **options)
        self.visibility_timeout = _validation.seconds("visibility_timeout", visibility_timeout,
                                                      allow_zero=False)
        self.max_read_ct = _validation.positive_int("max_read_ct", max_read_ct)

    async def dequeue(self, limit: int = 1, *,
                      visibility_timeout: float | None = None) -> list[QueueMessage]:
        """Claim up to ``limit`` visible messages, oldest first; ``[]`` if none.

        Args:
            limit: most messages to claim.
            visibility_timeout: lease in seconds (default: the consumer's).

        Raises:
            StateError: the consumer is suspended or stopped.
        """
        limit = _validation.positive_int("limit", limit)
        lease = (self.visibility_timeout if visibility_timeout is None else
                 _validation.seconds("visibility_timeout", visibility_timeout,
                                     allow_zero=False))
        worker_id, queue_id = await self._ids(*_READY_ONLY)
        async with self._db.transaction() as conn:
            return await self._messages.dequeue(
                conn, queue_id=queue_id, worker_id=worker_id, limit=limit, lease=lease,
                max_read_ct=self.max_read_ct,
            )

    async def dequeue_batch(self, limit: int) -> list[QueueMessage]:
        """Claim up to ``limit`` messages with the default lease (original pgqrs name)."""
        return await self.dequeue(limit)

    async def dequeue_batch_with_delay(self, limit: int, vt_seconds: float) -> list[QueueMessage]:
        """Claim up to ``limit`` messages with a lease of ``vt_seconds`` (original name)."""
        return await self.dequeue(limit, visibility_timeout=vt_seconds)

    async def archive(self, message_id: int) -> bool:
        """Move a message this consumer holds to the archive; False if it does not hold it."""
        return (await self.archive_batch([message_id]))[0]

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]:
        """Archive held messages in one atomic statement; one bool per id, in order."""
        ids = _validation.message_ids(message_ids)
        if not ids:
            return []
        worker_id, _ = await self._ids(*_LIVE)
        async with self._db.transaction() as conn:
            done = await self._messages.archive(conn, worker_id=worker_id, ids=ids)
        return [i in done for i in ids]

    async def delete(self, message_id: int) -> bool:
        """Delete a message this consumer holds; False if it does not hold it."""
        return (await self.delete_batch([message_id]))[0]

    async def delete_batch(self, message_ids: Sequence[int]) -> list[bool]:
        """Delete held messages in one statement; one bool per id, in order."""
        ids = _validation.message_ids(message_ids)
        if not ids:
            return []
        worker_id, _ = await self._ids(*_LIVE)
        async with self._db.transaction() as conn:
            done = await self._messages.delete(conn, worker_id=worker_id, ids=ids)
        return [i in done for i in ids]

    async def extend_visibility(self, message_id: int, seconds: float) -> bool:
        """Make the lease end ``seconds`` from now; False if this consumer lost the message."""
        (mid,) = _validation.message_ids([message_id])
        lease = _validation.seconds("seconds", seconds, allow_zero=False)
        worker_id, _ = await self._ids(*_LIVE)
        async with self._db.transaction() as conn:
            return await self._messages.extend(conn, worker_id=worker_id, message_id=mid,
                                               seconds=lease)

    async def release(self, message_ids: Sequence[int] | int, *,
                      delay: float | None = None) -> int:
        """Give held messages back (nack): visible again now, or after ``delay`` seconds.

        Returns:
            How many of the messages this consumer still held and released.
        """
        ids = _validation.message_ids(message_ids)
        seconds = _validation.seconds("delay", delay) if delay is not None else None
        if not ids:
            return 0
        worker_id, _ = await self._ids(*_LIVE)
        async with self._db.transaction() as conn:
            return await self._messages.release(conn, worker_id=worker_id, ids=ids,
                                                delay=seconds)

    async def held_count(self) -> int:
        """How many messages this consumer currently holds."""
        worker_id = await self.register()
        async with self._db.transaction() as conn:
            return await self._messages.count(conn, worker_id=worker_id)

    async def _before_shutdown(self) -> None:
        held = await self.held_count()
        if held:
            raise errors.StateError(
                str(self._status), str(WorkerStatus.STOPPED),
                f"the consumer still holds {held} message(s); archive, delete or release "
                "them first (close() releases them for you)",
            )

    async def _release_held(self) -> None:
        assert self._worker_id is not None
        async with self._db.transaction() as conn:
            await self._messages.release_worker(conn, self._worker_id)
