"""Admin: schema installation and queue, worker, metrics and dead-letter administration."""

from __future__ import annotations

from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pgqrs import _accessors, _compat, _db, _validation, errors, migrate, repositories
from pgqrs._admin_maintenance import AdminMaintenance
from pgqrs.config import Config
from pgqrs.settings import DEFAULT, Default, Settings, validate_policy
from pgqrs.types import (
    QueueInfo,
    QueueMessage,
    QueueMetrics,
    SystemStats,
    WorkerHealthStats,
    WorkerInfo,
    WorkerStatus,
)


class Admin(AdminMaintenance):
    """Installs the schema and administers queues, workers, metrics and dead letters.

    Retention and recurring messages (``purge_archive``, ``schedule``, ...) come from
    ``pgqrs._admin_maintenance``.

    Example:
        async with Admin("postgresql://localhost/mydb") as admin:
            await admin.install()
            await admin.create_queue("tasks")

    ``Producer(admin, ...)`` and ``Consumer(admin, ...)`` share this Admin's engine and
    settings; they show up in ``get_workers()`` at the Admin's next call.

    Args:
        dsn: a PostgreSQL URL, the application's ``AsyncEngine`` (never disposed), or a
            ``pgqrs.Config`` (the original binding's style; these keywords override it).
        schema: schema of the pgqrs tables (default ``public`` or ``PGQRS_SCHEMA``).
        max_read_ct: dead-letter threshold of the queues this Admin creates (default 5 or
            ``PGQRS_MAX_READ_CT``). Metrics and ``dlq()`` follow each queue's own.
        **options: other ``Settings`` options, including the other policy defaults of
            new queues (``visibility_timeout``, ``retry_backoff_base``, ...).
    """

    def __init__(self, dsn: str | AsyncEngine | Config, *, schema: str | None = None,
                 max_read_ct: int | None = None, **options: Any) -> None:
        dsn, schema, max_read_ct, options = _compat.unpack_config(dsn, schema, max_read_ct,
                                                                  options)
        if max_read_ct is not None:
            _validation.positive_int("max_read_ct", max_read_ct)
        self.settings = Settings.build(schema=schema, max_read_ct=max_read_ct, **options)
        self.max_read_ct = self.settings.max_read_ct
        # Unpooled: administration is occasional, and an Admin that is never closed (as in
        # the seed's examples) must not leave connections behind.
        self._db: _db.Backend
        if isinstance(dsn, _db.Source):  # the sync facade's backend
            self._db = _db.open_backend(dsn, self.settings, pooled=False)
        else:  # registers clients created from this Admin before its next call (_compat)
            self._db = _compat.AdminDatabase(dsn, self.settings, pooled=False)
        repos = repositories.for_schema(self.settings.schema)
        self._queues, self._workers = repos.queues, repos.workers
        self._messages, self._archive = repos.messages, repos.archive

    def __repr__(self) -> str:
        return f"Admin(schema={self.settings.schema!r})"

    @property
    def schema(self) -> str:
        """The schema holding the pgqrs tables."""
        return self.settings.schema

    # -- schema ---------------------------------------------------------------------------

    async def install(self, *, connection: AsyncConnection | None = None) -> None:
        """Install or upgrade the schema to this version's head (Alembic), idempotently.

        Runs in one transaction under an advisory lock, so concurrent installs from many
        processes are safe. With ``connection=``, runs inside the caller's transaction and
        leaves the commit to the caller. Without it, an upgrade of a populated schema first
        builds new indexes concurrently, outside that transaction (``migrate.prepare_sync``).
        """
        if connection is None and not self.settings.pgbouncer:  # (a session-level lock)
            async with self._db.autocommit() as auto:
                await self._db.run_sync(auto, migrate.prepare_sync, self.schema)
        async with self._db.transaction(connection) as conn:
            await self._db.run_sync(conn, migrate.lock_sync)
            await self._db.run_sync(conn, migrate.upgrade_sync, self.schema)

    def install_sql(self) -> str:
        """The DDL ``install()`` would run on an empty database (for DBAs); no I/O."""
        return migrate.install_sql(self.schema)

    async def verify(self) -> str:
        """Check the schema is installed and current; return its revision.

        Raises:
            SchemaNotInstalledError: missing or partial schema.
            SchemaVersionMismatchError: the database is at another revision.
        """
        async with self._db.transaction() as conn:
            return await self._db.run_sync(conn, migrate.verify_sync, self.schema)

    # -- queues ---------------------------------------------------------------------------

    async def create_queue(self, name: str, *, max_read_ct: int | None = None,
                           visibility_timeout: float | timedelta | None = None,
                           retry_backoff_base: float | timedelta | None = None,
                           retry_backoff_max: float | timedelta | None = None,
                           retention: float | timedelta | Default | None = DEFAULT,
                           ) -> QueueInfo:
        """Create a queue with its policy; what is not given comes from the settings.

        Args:
            name: the queue's name.
            max_read_ct: deliveries after which a message is a dead letter.
            visibility_timeout: default lease in seconds (or a ``timedelta``).
            retry_backoff_base: first retry delay of the consume loop, in seconds.
            retry_backoff_max: longest retry delay of the consume loop, in seconds.
            retention: how long archived rows are kept, in seconds; None keeps them
                forever (the default unless ``PGQRS_RETENTION`` is set).

        Raises:
            ValidationError: the name is empty, too long or not printable, or a policy
                value is out of range.
            QueueAlreadyExistsError: the name is taken (message contains "already exists").
        """
        name = _validation.queue_name(name)
        policy = self.settings.queue_policy(
            max_read_ct=max_read_ct, visibility_timeout=visibility_timeout,
            retry_backoff_base=retry_backoff_base, retry_backoff_max=retry_backoff_max,
            retention=retention)
        async with self._db.transaction(queue_name=name) as conn:
            return await self._queues.create(conn, name, policy)

    async def update_queue(self, name: str, **changes: Any) -> QueueInfo:
        """Change some of a queue's policy; running clients follow at their next claim.

        Args:
            name: the queue's name.
            **changes: any of ``max_read_ct``, ``visibility_timeout``,
                ``retry_backoff_base``, ``retry_backoff_max``, ``retention`` (None: keep
                forever) and ``paused``; fields not given keep their value.

        Returns:
            The queue as stored after the change.

        Raises:
            ValidationError: an unknown field or a bad value (nothing is changed).
            QueueNotFoundError: no such queue.
        """
        name = _validation.queue_name(name)
        values = validate_policy(changes)
        async with self._db.transaction() as conn:
            return await self._queues.update(conn, name, values)

    async def pause_queue(self, name: str) -> QueueInfo:
        """Stop every consumer claiming from the queue; enqueues go on. Idempotent."""
        return await self.update_queue(name, paused=True)

    async def resume_queue(self, name: str) -> QueueInfo:
        """Let consumers claim from a paused queue again (waiting ones wake at once)."""
        return await self.update_queue(name, paused=False)

    async def get_queue(self, name: str) -> QueueInfo:
        """The queue called ``name``; raises ``QueueNotFoundError``."""
        name = _validation.queue_name(name)
        async with self._db.transaction() as conn:
            return await self._queues.get(conn, name)

    async def list_queues(self) -> list[QueueInfo]:
        """All queues, ordered by id."""
        async with self._db.transaction() as conn:
            return await self._queues.list(conn)

    async def delete_queue(self, name: str) -> None:
        """Delete a queue and its archive; refused while messages or live workers remain.

        Raises:
            QueueNotFoundError: no such queue.
            QueueInUseError: messages or live (not stopped) workers remain.
        """
        name = _validation.queue_name(name)
        async with self._db.transaction() as conn:
            await self._queues.delete(conn, name)

    async def purge_queue(self, name: str) -> int:
        """Delete a queue's messages and archive rows; return how many rows went.

        Workers stay registered and keep working.
        """
        name = _validation.queue_name(name)
        async with self._db.transaction() as conn:
            queue = await self._queues.get(conn, name)
            return await self._queues.purge(conn, queue.id)

    # -- metrics --------------------------------------------------------------------------

    async def queue_metrics(self, name: str) -> QueueMetrics:
        """Message counts of one queue, in one snapshot (archived: exact up to 10,000)."""
        name = _validation.queue_name(name)
        async with self._db.transaction() as conn:
            queue = await self._queues.get(conn, name)
            rows = await self._messages.metrics(conn, queue_id=queue.id)
            archived = await self._archive.approximate_count(conn, queue_id=queue.id)
        return _metrics(queue, rows.get(queue.id), archived)

    async def all_queues_metrics(self) -> list[QueueMetrics]:
        """Message counts of every queue, in one snapshot."""
        async with self._db.transaction() as conn:
            queues = await self._queues.list(conn)
            rows = await self._messages.metrics(conn, queue_id=None)
            archived = {q.id: await self._archive.approximate_count(conn, queue_id=q.id)
                        for q in queues}
        return [_metrics(q, rows.get(q.id), archived[q.id]) for q in queues]

    async def system_stats(self) -> SystemStats:
        """Queues, workers by status, message and archive counts, schema revision.

        The archive count is exact up to 10,000 rows, then the planner's estimate, so this
        stays fast however big the archive grows (``ArchiveRepository.approximate_count``).
        """
        async with self._db.transaction() as conn:
            queues = await self._queues.count(conn)
            health = await self._workers.health(conn, stale_after=self.settings.stale_threshold,
                                                by_queue=False)
            messages = await self._messages.count(conn)
            archived = await self._archive.approximate_count(conn)
            revision = await self._db.run_sync(conn, migrate.current_revision, self.schema)
        h = health[0]
        return SystemStats(
            total_queues=queues, total_workers=h.total_workers,
            workers_by_status={"ready": h.ready_workers, "suspended": h.suspended_workers,
                               "stopped": h.stopped_workers},
            total_messages=messages, archived_messages=archived, schema_revision=revision,
        )

    # -- workers --------------------------------------------------------------------------

    async def worker_health_stats(self, stale_after: float,
                                  group_by_queue: bool = False) -> list[WorkerHealthStats]:
        """Workers per status, and live ones silent for over ``stale_after`` seconds."""
        stale = _validation.seconds("stale_after", stale_after)
        async with self._db.transaction() as conn:
            return await self._workers.health(conn, stale_after=stale, by_queue=group_by_queue)

    async def reclaim_messages(self, queue: str, older_than: float | None = None, *,
                               older_than_seconds: float | None = None) -> int:
        """Zombie reclaim: stop workers silent for ``older_than`` seconds, release their work.

        Args:
            queue: the queue whose workers to check.
            older_than: heartbeat age in seconds (default: the stale threshold, three
                heartbeat intervals).
            older_than_seconds: the original binding's name for ``older_than``.

        Returns:
            How many messages were released.
        """
        if older_than_seconds is not None:
            if older_than is not None:
                raise errors.ValidationError(
                    "pass older_than or older_than_seconds (its original name), not both")
            older_than = older_than_seconds
        name = _validation.queue_name(queue)
        age = (self.settings.stale_threshold if older_than is None
               else _validation.seconds("older_than", older_than))
        async with self._db.transaction() as conn:
            q = await self._queues.get(conn, name)
            released = 0
            for worker_id in await self._workers.stop_stale(conn, queue_id=q.id,
                                                            older_than=age):
                released += await self._messages.release_worker(conn, worker_id)
        return released

    async def get_worker(self, worker_id: int) -> WorkerInfo:
        """The worker with this id; raises ``WorkerNotFoundError``."""
        async with self._db.transaction() as conn:
            info = await self._workers.get(conn, worker_id)
        if info is None:
            raise errors.WorkerNotFoundError(worker_id)
        return info

    async def release_worker_messages(self, worker_id: int) -> int:
        """Release every message the worker holds (visible again at once); return how many."""
        async with self._db.transaction() as conn:
            if await self._workers.get(conn, worker_id) is None:
                raise errors.WorkerNotFoundError(worker_id)
            return await self._messages.release_worker(conn, worker_id)

    async def get_worker_messages(self, worker_id: int) -> list[QueueMessage]:
        """The messages the worker currently holds."""
        async with self._db.transaction() as conn:
            if await self._workers.get(conn, worker_id) is None:
                raise errors.WorkerNotFoundError(worker_id)
            return await self._messages.list(conn, worker_id=worker_id)

    async def set_worker_status(self, worker_id: int, status: WorkerStatus) -> None:
        """Suspend, resume or stop a worker from outside (the worker notices at once).

        Raises:
            WorkerNotFoundError: no such worker.
            StateError: the transition is not allowed.
        """
        status = WorkerStatus(status)
        allowed = {
            WorkerStatus.SUSPENDED: (WorkerStatus.READY,),
            WorkerStatus.READY: (WorkerStatus.SUSPENDED,),
            WorkerStatus.STOPPED: (WorkerStatus.READY, WorkerStatus.SUSPENDED),
        }[status]
        async with self._db.transaction() as conn:
            blocked = await self._workers.transition(conn, worker_id, allowed_from=allowed,
                                                     to=status)
            if blocked is not None:
                raise errors.StateError(str(blocked), str(status),
                                        f"allowed only from {', '.join(allowed)}")
            if status is WorkerStatus.STOPPED:
                await self._messages.release_worker(conn, worker_id)

    async def purge_old_workers(self, older_than: float) -> int:
        """Delete stopped workers whose last heartbeat is over ``older_than`` seconds old."""
        age = _validation.seconds("older_than", older_than)
        async with self._db.transaction() as conn:
            return await self._workers.purge_stopped(conn, age)

    async def delete_worker(self, worker_id: int) -> None:
        """Delete a stopped worker's row (its archive history keeps the id).

        Raises:
            WorkerNotFoundError: no such worker.
            StateError: the worker is not stopped.
        """
        async with self._db.transaction() as conn:
            info = await self._workers.get(conn, worker_id)
            if info is None:
                raise errors.WorkerNotFoundError(worker_id)
            if info.status is not WorkerStatus.STOPPED:
                raise errors.StateError(str(info.status), "deleted",
                                        "stop the worker first (it may still be running)")
            await self._workers.delete(conn, worker_id)

    # -- dead letters ---------------------------------------------------------------------

    async def dlq(self, queue: str | None = None) -> list[int]:
        """Archive dead letters (their queue's ``max_read_ct`` used, lease over), marked dead.

        Each message is judged by its own queue's policy, whatever this Admin's settings.
        A message whose lease is still running is never taken. Returns the moved messages'
        original ids.
        """
        async with self._db.transaction() as conn:
            queue_id = None
            if queue is not None:
                queue_id = (await self._queues.get(conn, _validation.queue_name(queue))).id
            return await self._messages.move_dead_letters(conn, queue_id=queue_id)

    async def replay_dlq(self, archive_id: int) -> int | None:
        """Put a dead letter back on its queue as a fresh message; its new id, or None."""
        (archive_id,) = _validation.message_ids([archive_id])
        async with self._db.transaction() as conn:
            return await self._archive.replay(conn, archive_id)

    # -- table accessors ------------------------------------------------------------------

    async def get_queues(self) -> _accessors.Queues:
        """Accessor for ``pgqrs_queues``."""
        return _accessors.Queues(self._db, self.schema)

    async def get_workers(self) -> _accessors.Workers:
        """Accessor for ``pgqrs_workers``."""
        return _accessors.Workers(self._db, self.schema)

    async def get_messages(self) -> _accessors.Messages:
        """Accessor for ``pgqrs_messages``."""
        return _accessors.Messages(self._db, self.schema)

    async def get_archive(self) -> _accessors.Archive:
        """Accessor for ``pgqrs_archive``."""
        return _accessors.Archive(self._db, self.schema)

    # -- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        """Run ``SELECT 1``; raises ``DatabaseUnavailableError`` if unreachable."""
        async with self._db.transaction() as conn:
            await conn.execute(select(func.now()))

    async def close(self) -> None:
        """Dispose pgqrs's own engine (a host engine is left alone). Idempotent."""
        await self._db.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


def _metrics(queue: QueueInfo, row: dict[str, Any] | None, archived: int) -> QueueMetrics:
    if row is None:
        return QueueMetrics(queue.queue_name, 0, 0, 0, 0, 0, archived, None, None)
    oldest = row["oldest_pending"]
    return QueueMetrics(
        queue_name=queue.queue_name, total_messages=row["total"],
        pending_messages=row["pending"], leased_messages=row["leased"],
        delayed_messages=row["delayed"], dead_messages=row["dead"],
        archived_messages=archived,
        oldest_pending_age_seconds=(row["now"] - oldest).total_seconds() if oldest else None,
        newest_message_at=row["newest"],
    )
