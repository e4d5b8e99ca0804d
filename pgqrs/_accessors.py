"""Table accessors returned by ``Admin.get_queues()`` and friends.

Each runs its own short transaction per call, like the rest of Admin.
"""

from __future__ import annotations

import builtins

from pgqrs import _validation, errors, repositories
from pgqrs._db import Backend
from pgqrs.types import ArchivedMessage, QueueInfo, QueueMessage, WorkerInfo


class _Accessor:
    def __init__(self, db: Backend, schema: str) -> None:
        self._db = db
        self._repos = repositories.for_schema(schema)
        self._queues = self._repos.queues

    async def _queue_id(self, queue: str | None) -> int | None:
        if queue is None:
            return None
        async with self._db.transaction() as conn:
            return (await self._queues.get(conn, queue)).id


class Queues(_Accessor):
    """``pgqrs_queues``: ``count()``, ``list()``, ``get(id)``."""

    async def count(self) -> int:
        """Number of queues."""
        async with self._db.transaction() as conn:
            return await self._queues.count(conn)

    async def list(self, limit: int | None = None, offset: int = 0) -> builtins.list[QueueInfo]:
        """Queues ordered by id."""
        async with self._db.transaction() as conn:
            return await self._queues.list(conn, limit, offset)

    async def get(self, queue_id: int) -> QueueInfo:
        """The queue with this id; raises ``QueueNotFoundError``."""
        async with self._db.transaction() as conn:
            info = await self._queues.get_by_id(conn, queue_id)
        if info is None:
            raise errors.QueueNotFoundError(f"#{queue_id}")
        return info


class Workers(_Accessor):
    """``pgqrs_workers``: ``count()``, ``list()``, ``get(id)``, optionally by queue."""

    def __init__(self, db: Backend, schema: str) -> None:
        super().__init__(db, schema)
        self._workers = self._repos.workers

    async def count(self, queue: str | None = None) -> int:
        """Number of workers, optionally of one queue."""
        queue_id = await self._queue_id(queue)
        async with self._db.transaction() as conn:
            return await self._workers.count(conn, queue_id=queue_id)

    async def list(self, limit: int | None = None, offset: int = 0, *,
                   queue: str | None = None) -> builtins.list[WorkerInfo]:
        """Workers ordered by id, optionally of one queue."""
        queue_id = await self._queue_id(queue)
        async with self._db.transaction() as conn:
            return await self._workers.list(conn, queue_id=queue_id, limit=limit, offset=offset)

    async def get(self, worker_id: int) -> WorkerInfo:
        """The worker with this id; raises ``WorkerNotFoundError``."""
        async with self._db.transaction() as conn:
            info = await self._workers.get(conn, worker_id)
        if info is None:
            raise errors.WorkerNotFoundError(worker_id)
        return info


class Messages(_Accessor):
    """``pgqrs_messages``: ``count()``, ``list()``, ``get(id)``, by queue and/or worker."""

    def __init__(self, db: Backend, schema: str) -> None:
        super().__init__(db, schema)
        self._messages = self._repos.messages

    async def count(self, queue: str | None = None, *, worker_id: int | None = None) -> int:
        """Number of live messages."""
        queue_id = await self._queue_id(queue)
        async with self._db.transaction() as conn:
            return await self._messages.count(conn, queue_id=queue_id, worker_id=worker_id)

    async def list(self, limit: int | None = None, offset: int = 0, *, queue: str | None = None,
                   worker_id: int | None = None) -> builtins.list[QueueMessage]:
        """Live messages, oldest first."""
        queue_id = await self._queue_id(queue)
        async with self._db.transaction() as conn:
            return await self._messages.list(conn, queue_id=queue_id, worker_id=worker_id,
                                             limit=limit, offset=offset)

    async def get(self, message_id: int) -> QueueMessage | None:
        """The live message with this id, or None."""
        async with self._db.transaction() as conn:
            return await self._messages.get(conn, message_id)

    async def archive(self, message_id: int) -> bool:
        """Operator override: archive a message whoever holds it; True if it existed."""
        async with self._db.transaction() as conn:
            return bool(await self._messages.archive(conn, worker_id=None, ids=[message_id]))

    async def delete(self, message_id: int) -> bool:
        """Operator override: delete a message whoever holds it; True if it existed."""
        async with self._db.transaction() as conn:
            return bool(await self._messages.delete(conn, worker_id=None, ids=[message_id]))


class Archive(_Accessor):
    """``pgqrs_archive``: listing, counts, dead letters and per-worker queries."""

    def __init__(self, db: Backend, schema: str) -> None:
        super().__init__(db, schema)
        self._archive = self._repos.archive

    async def count(self, queue: str | None = None, *, worker_id: int | None = None,
                    dead: bool | None = None) -> int:
        """Number of archived messages (``dead=True`` for dead letters only)."""
        queue_id = await self._queue_id(queue)
        async with self._db.transaction() as conn:
            return await self._archive.count(conn, queue_id=queue_id, worker_id=worker_id,
                                             dead=dead)

    async def list(self, limit: int | None = None, offset: int = 0, *, queue: str | None = None,
                   worker_id: int | None = None,
                   dead: bool | None = None) -> builtins.list[ArchivedMessage]:
        """Archived messages, oldest first."""
        queue_id = await self._queue_id(queue)
        async with self._db.transaction() as conn:
            return await self._archive.list(conn, queue_id=queue_id, worker_id=worker_id,
                                            dead=dead, limit=limit, offset=offset)

    async def get(self, archive_id: int) -> ArchivedMessage | None:
        """The archive row with this id, or None."""
        async with self._db.transaction() as conn:
            return await self._archive.get(conn, archive_id)

    async def delete(self, archive_id: int) -> bool:
        """Delete one archive row; True if it existed."""
        async with self._db.transaction() as conn:
            return await self._archive.delete(conn, archive_id)

    async def list_dlq_messages(self, limit: int | None = None, offset: int = 0,
                                *original: int,
                                queue: str | None = None) -> builtins.list[ArchivedMessage]:
        """Dead letters, oldest first.

        The original binding's ``list_dlq_messages(max_attempts, limit, offset)`` also
        works: with three positional numbers the first is its ``max_attempts``, which is
        checked and not needed (a dead letter is marked as one when it is archived).
        """
        if original:
            if len(original) > 1:
                raise errors.ValidationError(
                    "list_dlq_messages takes (limit, offset) or the original binding's "
                    "(max_attempts, limit, offset)")
            _validation.positive_int("max_attempts", limit)
            limit, offset = offset, original[0]
        return await self.list(limit, offset, queue=queue, dead=True)

    async def dlq_count(self, queue: str | int | None = None) -> int:
        """Number of dead letters, optionally of one queue.

        The original binding's ``dlq_count(max_attempts)`` also works: an int argument is
        its ``max_attempts``, checked and not needed (a dead letter is marked as one when it
        is archived, by its queue's threshold), so all dead letters are counted.
        """
        if isinstance(queue, int):
            _validation.positive_int("max_attempts", queue)  # refuses True/False too
            queue = None
        return await self.count(queue, dead=True)

    async def list_by_worker(self, worker_id: int, limit: int | None = None,
                             offset: int = 0) -> builtins.list[ArchivedMessage]:
        """Messages a worker consumed, oldest first."""
        return await self.list(limit, offset, worker_id=worker_id)

    async def count_by_worker(self, worker_id: int) -> int:
        """Number of messages a worker consumed."""
        return await self.count(worker_id=worker_id)

    async def delete_by_worker(self, worker_id: int) -> int:
        """Delete the archive rows a worker consumed; return how many."""
        async with self._db.transaction() as conn:
            return await self._archive.delete_by_worker(conn, worker_id)
