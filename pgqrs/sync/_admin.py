"""``pgqrs.sync.Admin``: the async ``Admin``, run on the application's ``Engine``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Connection, Engine

from pgqrs import admin
from pgqrs._schedule import ScheduleInfo
from pgqrs.settings import DEFAULT, Default, Settings
from pgqrs.sync import _accessors, _db, _loop
from pgqrs.types import (
    QueueInfo,
    QueueMessage,
    QueueMetrics,
    SystemStats,
    WorkerHealthStats,
    WorkerInfo,
    WorkerStatus,
)


class Admin:
    """Schema installation and administration for synchronous applications.

    The same client as ``pgqrs.Admin`` (every method is its synchronous twin), on the
    application's synchronous ``Engine``, which pgqrs never disposes.

    Example:
        admin = pgqrs.sync.Admin(engine)
        admin.install()
        admin.create_queue("emails")

    Args:
        engine: the application's synchronous SQLAlchemy ``Engine``.
        schema: schema of the pgqrs tables (default ``public`` or ``PGQRS_SCHEMA``).
        max_read_ct: deliveries after which a message counts as a dead letter.
        **options: other ``Settings`` options.
    """

    def __init__(self, engine: Engine, *, schema: str | None = None, max_read_ct: int = 5,
                 **options: Any) -> None:
        self._core = admin.Admin(_db.as_dsn(engine), schema=schema, max_read_ct=max_read_ct,
                                 **options)
        self.engine = engine
        """The application's engine."""

    def __repr__(self) -> str:
        return f"pgqrs.sync.{self._core!r}"

    @property
    def settings(self) -> Settings:
        """This client's options."""
        return self._core.settings

    @property
    def schema(self) -> str:
        """The schema holding the pgqrs tables."""
        return self._core.schema

    @property
    def max_read_ct(self) -> int:
        """Deliveries after which a message counts as a dead letter."""
        return self._core.max_read_ct

    def install(self, *, connection: Connection | None = None) -> None:
        """Install or upgrade the schema to head under the install lock (see the async one).

        With ``connection=``, runs inside the caller's transaction and leaves the commit to
        the caller.
        """
        return _loop.run(self._core.install(connection=_db.lent(connection)))

    def install_sql(self) -> str:
        """The DDL ``install()`` would run on an empty database (for DBAs); no I/O."""
        return self._core.install_sql()

    def verify(self) -> str:
        """Check the schema is installed and current; return its revision."""
        return _loop.run(self._core.verify())

    def create_queue(self, name: str, *, max_read_ct: int | None = None,
                     visibility_timeout: float | timedelta | None = None,
                     retry_backoff_base: float | timedelta | None = None,
                     retry_backoff_max: float | timedelta | None = None,
                     retention: float | timedelta | Default | None = DEFAULT) -> QueueInfo:
        """Create a queue with its policy; a duplicate raises ``QueueAlreadyExistsError``."""
        return _loop.run(self._core.create_queue(
            name, max_read_ct=max_read_ct, visibility_timeout=visibility_timeout,
            retry_backoff_base=retry_backoff_base, retry_backoff_max=retry_backoff_max,
            retention=retention))

    def update_queue(self, name: str, **changes: Any) -> QueueInfo:
        """Change some of a queue's policy (see ``pgqrs.Admin.update_queue``)."""
        return _loop.run(self._core.update_queue(name, **changes))

    def pause_queue(self, name: str) -> QueueInfo:
        """Stop every consumer claiming from the queue; enqueues go on. Idempotent."""
        return _loop.run(self._core.pause_queue(name))

    def resume_queue(self, name: str) -> QueueInfo:
        """Let consumers claim from a paused queue again."""
        return _loop.run(self._core.resume_queue(name))

    def get_queue(self, name: str) -> QueueInfo:
        """The queue called ``name``; raises ``QueueNotFoundError``."""
        return _loop.run(self._core.get_queue(name))

    def list_queues(self) -> list[QueueInfo]:
        """All queues, ordered by id."""
        return _loop.run(self._core.list_queues())

    def delete_queue(self, name: str) -> None:
        """Delete a queue and its archive; refused while messages or live workers remain."""
        return _loop.run(self._core.delete_queue(name))

    def purge_queue(self, name: str) -> int:
        """Delete a queue's messages and archive rows; return how many rows went."""
        return _loop.run(self._core.purge_queue(name))

    def queue_metrics(self, name: str) -> QueueMetrics:
        """Message counts of one queue, in one snapshot."""
        return _loop.run(self._core.queue_metrics(name))

    def all_queues_metrics(self) -> list[QueueMetrics]:
        """Message counts of every queue, in one snapshot."""
        return _loop.run(self._core.all_queues_metrics())

    def system_stats(self) -> SystemStats:
        """Queues, workers by status, message and archive counts, schema revision."""
        return _loop.run(self._core.system_stats())

    def worker_health_stats(self, stale_after: float,
                            group_by_queue: bool = False) -> list[WorkerHealthStats]:
        """Workers per status, and live ones silent for over ``stale_after`` seconds."""
        return _loop.run(self._core.worker_health_stats(stale_after, group_by_queue))

    def reclaim_messages(self, queue: str, older_than: float | None = None, *,
                         older_than_seconds: float | None = None) -> int:
        """Stop workers silent for ``older_than`` seconds and release their messages."""
        return _loop.run(self._core.reclaim_messages(
            queue, older_than, older_than_seconds=older_than_seconds))

    def get_worker(self, worker_id: int) -> WorkerInfo:
        """The worker with this id; raises ``WorkerNotFoundError``."""
        return _loop.run(self._core.get_worker(worker_id))

    def release_worker_messages(self, worker_id: int) -> int:
        """Release every message the worker holds; return how many."""
        return _loop.run(self._core.release_worker_messages(worker_id))

    def get_worker_messages(self, worker_id: int) -> list[QueueMessage]:
        """The messages the worker currently holds."""
        return _loop.run(self._core.get_worker_messages(worker_id))

    def set_worker_status(self, worker_id: int, status: WorkerStatus) -> None:
        """Suspend, resume or stop a worker from outside."""
        return _loop.run(self._core.set_worker_status(worker_id, status))

    def purge_old_workers(self, older_than: float) -> int:
        """Delete stopped workers whose last heartbeat is over ``older_than`` seconds old."""
        return _loop.run(self._core.purge_old_workers(older_than))

    def delete_worker(self, worker_id: int) -> None:
        """Delete a stopped worker's row."""
        return _loop.run(self._core.delete_worker(worker_id))

    def dlq(self, queue: str | None = None) -> list[int]:
        """Archive dead letters, marked dead; return the moved messages' original ids."""
        return _loop.run(self._core.dlq(queue))

    def replay_dlq(self, archive_id: int) -> int | None:
        """Put a dead letter back on its queue as a fresh message; its new id, or None."""
        return _loop.run(self._core.replay_dlq(archive_id))

    def purge_archive(self, *, queue: str | None = None,
                      older_than: float | timedelta | None = None, dead_letters: bool = True,
                      batch_size: int = 1000, dry_run: bool = False,
                      on_batch: Callable[[int], object] | None = None) -> int:
        """Delete archived rows by age in short batches (see ``pgqrs.Admin.purge_archive``)."""
        return _loop.run(self._core.purge_archive(
            queue=queue, older_than=older_than, dead_letters=dead_letters,
            batch_size=batch_size, dry_run=dry_run, on_batch=on_batch))

    def schedule(self, queue: str, name: str, *, cron: str, payload: dict[str, Any],
                 headers: Mapping[str, str] | None = None, timezone: str = "UTC",
                 catch_up: bool = True) -> ScheduleInfo:
        """Define a recurring message (see ``pgqrs.Admin.schedule``)."""
        return _loop.run(self._core.schedule(queue, name, cron=cron, payload=payload,
                                             headers=headers, timezone=timezone,
                                             catch_up=catch_up))

    def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name``; False if there was none."""
        return _loop.run(self._core.unschedule(name))

    def get_schedule(self, name: str) -> ScheduleInfo | None:
        """The schedule called ``name``, or None."""
        return _loop.run(self._core.get_schedule(name))

    def list_schedules(self, queue: str | None = None) -> list[ScheduleInfo]:
        """Every schedule (or those of ``queue``), ordered by name."""
        return _loop.run(self._core.list_schedules(queue))

    def get_queues(self) -> _accessors.Queues:
        """Accessor for ``pgqrs_queues``."""
        return _accessors.Queues(_loop.run(self._core.get_queues()))

    def get_workers(self) -> _accessors.Workers:
        """Accessor for ``pgqrs_workers``."""
        return _accessors.Workers(_loop.run(self._core.get_workers()))

    def get_messages(self) -> _accessors.Messages:
        """Accessor for ``pgqrs_messages``."""
        return _accessors.Messages(_loop.run(self._core.get_messages()))

    def get_archive(self) -> _accessors.Archive:
        """Accessor for ``pgqrs_archive``."""
        return _accessors.Archive(_loop.run(self._core.get_archive()))

    def ping(self) -> None:
        """Run ``SELECT now()``; raises ``DatabaseUnavailableError`` if unreachable."""
        return _loop.run(self._core.ping())

    def close(self) -> None:
        """Nothing to free (the engine is the application's); kept for symmetry."""
        return _loop.run(self._core.close())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
