"""Synchronous twins of the table accessors returned by ``Admin.get_queues()`` and friends."""

from __future__ import annotations

import builtins

from pgqrs import _accessors
from pgqrs.sync import _loop
from pgqrs.types import ArchivedMessage, QueueInfo, QueueMessage, WorkerInfo


class Queues:
    """``pgqrs_queues``: ``count()``, ``list()``, ``get(id)``."""

    def __init__(self, core: _accessors.Queues) -> None:
        self._core = core

    def count(self) -> int:
        """Number of queues."""
        return _loop.run(self._core.count())

    def list(self, limit: int | None = None, offset: int = 0) -> builtins.list[QueueInfo]:
        """Queues ordered by id."""
        return _loop.run(self._core.list(limit, offset))

    def get(self, queue_id: int) -> QueueInfo:
        """The queue with this id; raises ``QueueNotFoundError``."""
        return _loop.run(self._core.get(queue_id))


class Workers:
    """``pgqrs_workers``: ``count()``, ``list()``, ``get(id)``, optionally by queue."""

    def __init__(self, core: _accessors.Workers) -> None:
        self._core = core

    def count(self, queue: str | None = None) -> int:
        """Number of workers, optionally of one queue."""
        return _loop.run(self._core.count(queue))

    def list(self, limit: int | None = None, offset: int = 0, *,
             queue: str | None = None) -> builtins.list[WorkerInfo]:
        """Workers ordered by id, optionally of one queue."""
        return _loop.run(self._core.list(limit, offset, queue=queue))

    def get(self, worker_id: int) -> WorkerInfo:
        """The worker with this id; raises ``WorkerNotFoundError``."""
        return _loop.run(self._core.get(worker_id))


class Messages:
    """``pgqrs_messages``: ``count()``, ``list()``, ``get(id)``, by queue and/or worker."""

    def __init__(self, core: _accessors.Messages) -> None:
        self._core = core

    def count(self, queue: str | None = None, *, worker_id: int | None = None) -> int:
        """Number of live messages."""
        return _loop.run(self._core.count(queue, worker_id=worker_id))

    def list(self, limit: int | None = None, offset: int = 0, *, queue: str | None = None,
             worker_id: int | None = None) -> builtins.list[QueueMessage]:
        """Live messages, oldest first."""
        return _loop.run(self._core.list(limit, offset, queue=queue, worker_id=worker_id))

    def get(self, message_id: int) -> QueueMessage | None:
        """The live message with this id, or None."""
        return _loop.run(self._core.get(message_id))

    def archive(self, message_id: int) -> bool:
        """Operator override: archive a message whoever holds it; True if it existed."""
        return _loop.run(self._core.archive(message_id))

    def delete(self, message_id: int) -> bool:
        """Operator override: delete a message whoever holds it; True if it existed."""
        return _loop.run(self._core.delete(message_id))


class Archive:
    """``pgqrs_archive``: listing, counts, dead letters and per-worker queries."""

    def __init__(self, core: _accessors.Archive) -> None:
        self._core = core

    def count(self, queue: str | None = None, *, worker_id: int | None = None,
              dead: bool | None = None) -> int:
        """Number of archived messages (``dead=True`` for dead letters only)."""
        return _loop.run(self._core.count(queue, worker_id=worker_id, dead=dead))

    def list(self, limit: int | None = None, offset: int = 0, *, queue: str | None = None,
             worker_id: int | None = None,
             dead: bool | None = None) -> builtins.list[ArchivedMessage]:
        """Archived messages, oldest first."""
        return _loop.run(self._core.list(limit, offset, queue=queue, worker_id=worker_id,
                                   dead=dead))

    def get(self, archive_id: int) -> ArchivedMessage | None:
        """The archive row with this id, or None."""
        return _loop.run(self._core.get(archive_id))

    def delete(self, archive_id: int) -> bool:
        """Delete one archive row; True if it existed."""
        return _loop.run(self._core.delete(archive_id))

    def list_dlq_messages(self, limit: int | None = None, offset: int = 0, *original: int,
                          queue: str | None = None) -> builtins.list[ArchivedMessage]:
        """Dead letters, oldest first."""
        return _loop.run(self._core.list_dlq_messages(limit, offset, *original, queue=queue))

    def dlq_count(self, queue: str | int | None = None) -> int:
        """Number of dead letters."""
        return _loop.run(self._core.dlq_count(queue))

    def list_by_worker(self, worker_id: int, limit: int | None = None,
                       offset: int = 0) -> builtins.list[ArchivedMessage]:
        """Messages a worker consumed, oldest first."""
        return _loop.run(self._core.list_by_worker(worker_id, limit, offset))

    def count_by_worker(self, worker_id: int) -> int:
        """Number of messages a worker consumed."""
        return _loop.run(self._core.count_by_worker(worker_id))

    def delete_by_worker(self, worker_id: int) -> int:
        """Delete the archive rows a worker consumed; return how many."""
        return _loop.run(self._core.delete_by_worker(worker_id))
