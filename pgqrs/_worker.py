"""What Producer and Consumer share: lazy registration, heartbeats and the lifecycle.

A client registers its ``(hostname, port)`` row on first use (construction does no I/O),
then keeps it alive with a background heartbeat task. If the event loop shuts down while
the client is still open (``asyncio.run`` cancels leftover tasks), the heartbeat task
closes the client on its way out, so an unclosed client never leaves a "live" row behind.
A client created from an Admin (``Producer(admin, ...)``) shares the Admin's engine and is
registered before the Admin's next call (``pgqrs._compat``).

On a backend whose event loop runs only during a call (the sync facade), no task can beat
between calls: the client beats *on use* instead, on the first call that comes a
heartbeat interval after the last beat, and takes its row back if a reclaim stopped it
while it was idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy.ext.asyncio import AsyncEngine

from pgqrs import _compat, _db, _validation, errors, repositories
from pgqrs.settings import Settings
from pgqrs.types import WorkerStatus

if TYPE_CHECKING:
    from pgqrs.admin import Admin

log = logging.getLogger("pgqrs")

_READY, _SUSPENDED, _STOPPED = WorkerStatus.READY, WorkerStatus.SUSPENDED, WorkerStatus.STOPPED


class WorkerClient:
    """Base of Producer and Consumer: one registered worker bound to one queue."""

    def __init__(
        self,
        dsn: str | AsyncEngine | Admin,
        queue: str,
        hostname: str,
        port: int,
        **options: Any,
    ) -> None:
        self.queue_name = _validation.queue_name(queue)
        self.hostname, self.port = _validation.worker_identity(hostname, port)
        admin_db = _compat.lender(dsn)  # created from an Admin: share its engine and settings
        self._db: _db.Backend
        if admin_db is not None:
            self.settings, self._db = _compat.client_database(admin_db, options)
        else:
            self.settings = Settings.build(**options)
            # Its own engine runs the hot statements: generic plans (see _db.GENERIC_PLANS).
            self._db = _db.open_backend(dsn, self.settings,  # type: ignore[arg-type]
                                        generic_plans=True)
        repos = repositories.for_schema(self.settings.schema)
        self._queues, self._workers, self._messages = repos.queues, repos.workers, repos.messages
        self._worker_id: int | None = None
        self._token: datetime | None = None
        self._replaced = False
        self._queue_id: int | None = None
        self._status: WorkerStatus | None = None
        self._register_lock = self._db.lock()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._beats_on_use = not self._db.background_tasks
        self._next_beat = 0.0  # on-use mode: monotonic time of the next due heartbeat
        self._closed = False
        if admin_db is not None:
            # Registered before the Admin's next call (no I/O here); see pgqrs._compat.
            admin_db.adopt(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(queue={self.queue_name!r}, hostname={self.hostname!r}, "
                f"port={self.port}, worker_id={self._worker_id})")

    @property
    def worker_id(self) -> int | None:
        """This client's row in ``pgqrs_workers``; None until first use (or ``register()``)."""
        return self._worker_id

    async def register(self) -> int:
        """Register now rather than on first use; return the worker id.

        Raises:
            QueueNotFoundError: the queue does not exist.
            WorkerAlreadyExistsError: a live worker already uses this hostname and port.
            StateError: the client was closed.
        """
        if self._worker_id is not None:
            return self._worker_id
        if self._closed:
            raise errors.StateError.refused(str(_STOPPED), "register",
                                            "this client was closed; create a new one")
        async with self._register_lock:
            if self._worker_id is None:
                await self._register_row()
        assert self._worker_id is not None
        return self._worker_id

    async def _register_row(self) -> None:
        """Insert or take over the row, then start beating (call under the lock)."""
        async with self._db.transaction() as conn:
            queue = await self._queues.get(conn, self.queue_name)
            worker_id, self._token = await self._workers.register(
                conn, hostname=self.hostname, port=self.port, queue_id=queue.id,
                stale_after=self.settings.stale_threshold,
            )
        self._queue_id, self._worker_id, self._status = queue.id, worker_id, _READY
        if self._beats_on_use:
            self._next_beat = time.monotonic() + self.settings.heartbeat_interval
        else:
            self._heartbeat_task = asyncio.create_task(
                self._heartbeat_loop(), name=f"pgqrs-heartbeat-{worker_id}"
            )

    async def _beat_on_use(self) -> None:
        """On-use mode: beat now that an interval has passed; retake a row stopped idle."""
        async with self._register_lock:
            if time.monotonic() < self._next_beat:
                return  # a concurrent call (another thread of a sync app) just beat
            self._next_beat = time.monotonic() + self.settings.heartbeat_interval
            before = self._status
            await self.heartbeat()
            if self._status is _STOPPED and before is not _STOPPED:
                # Nothing beat for this client between calls, so a reclaim took it for dead
                # and stopped it. Take the row back as a background heartbeat would have
                # kept it: whatever it held was released (acks of those answer False, as
                # after a lease runs out).
                log.info("pgqrs worker %s was stopped while idle; registering it again",
                         self._worker_id)
                await self._register_row()

    async def _ids(self, operation: str, *allowed: WorkerStatus) -> tuple[int, int]:
        """Register if needed, check the local status; return (worker_id, queue_id)."""
        worker_id, queue_id = self._worker_id, self._queue_id
        if worker_id is not None and queue_id is not None and self._status in allowed \
                and not self._replaced and not self._beats_on_use:
            # Every call after the first: registered, allowed, beaten in the background.
            # What the checks below would conclude, without awaiting register().
            return worker_id, queue_id
        worker_id = await self.register()
        if self._beats_on_use and time.monotonic() >= self._next_beat and not self._closed:
            await self._beat_on_use()
            worker_id = await self.register()
        assert self._queue_id is not None and self._status is not None
        if self._replaced:
            raise errors.StateError.refused(
                str(_STOPPED), operation,
                f"worker {worker_id} was taken over by another process with the same "
                "hostname and port")
        if self._status not in allowed and not self._closed:
            # The cached status may lag an operator's change (pgqrs worker resume): ask the
            # database before refusing. The happy path costs nothing extra.
            await self.status()
        if self._status not in allowed:
            hint = ("call resume() first" if self._status is _SUSPENDED else
                    "it was shut down; create a new one")
            raise errors.StateError.refused(
                str(self._status), operation,
                f"{type(self).__name__} for queue {self.queue_name!r}: {hint}")
        return worker_id, self._queue_id

    async def _heartbeat_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.settings.heartbeat_interval)
                try:
                    await self.heartbeat()
                except errors.StateError as exc:
                    log.error("pgqrs worker %s: %s", self._worker_id, exc)
                    return
                except errors.PgqrsError as exc:
                    # The database may be briefly away; the next beat tries again.
                    log.warning("pgqrs heartbeat for worker %s failed: %s", self._worker_id, exc)
        except asyncio.CancelledError:
            if not self._closed:
                # The loop is going away with the client still open (asyncio.run's final
                # cancellation): leave the database tidy rather than a "live" row.
                self._heartbeat_task = None
                with contextlib.suppress(Exception):
                    await self.close()
            raise

    async def heartbeat(self) -> None:
        """Record a heartbeat now (the background task does this every interval)."""
        worker_id = await self.register()
        assert self._token is not None
        try:
            async with self._db.statement() as conn:
                self._status = await self._workers.heartbeat(conn, worker_id, self._token)
        except errors.StateError:
            self._status, self._replaced = _STOPPED, True  # refuse all further work
            raise

    async def status(self) -> WorkerStatus:
        """The worker's status as stored in the database."""
        worker_id = await self.register()
        async with self._db.transaction() as conn:
            info = await self._workers.get(conn, worker_id)
        if info is None:
            raise errors.WorkerNotFoundError(worker_id)
        self._status = info.status
        return info.status

    async def is_healthy(self, max_age: float) -> bool:
        """True if the worker is not stopped and beat within the last ``max_age`` seconds."""
        age = _validation.seconds("max_age", max_age)
        worker_id = await self.register()
        async with self._db.statement() as conn:
            return await self._workers.is_healthy(conn, worker_id, max_age=age)

    async def _transition(self, allowed_from: tuple[WorkerStatus, ...], to: WorkerStatus,
                          why: str) -> None:
        worker_id = await self.register()
        async with self._db.transaction() as conn:
            blocked_by = await self._workers.transition(
                conn, worker_id, allowed_from=allowed_from, to=to
            )
        if blocked_by is not None:
            self._status = blocked_by
            raise errors.StateError(str(blocked_by), str(to), why)
        self._status = to

    async def suspend(self) -> None:
        """Ready → suspended: a suspended consumer receives nothing until ``resume()``."""
        await self._transition((_READY,), _SUSPENDED, "only a ready worker can be suspended")

    async def resume(self) -> None:
        """Suspended → ready."""
        await self._transition((_SUSPENDED,), _READY, "only a suspended worker can resume")

    async def shutdown(self) -> None:
        """Ready or suspended → stopped; the client cannot be used afterwards."""
        await self._before_shutdown()
        await self._transition((_READY, _SUSPENDED), _STOPPED,
                               "the worker is already stopped")

    async def _before_shutdown(self) -> None:
        """Hook for Consumer: refuse to stop while holding messages."""

    async def _release_held(self) -> None:
        """Hook for Consumer: give back held messages when closing."""

    async def close(self, *, release_held: bool = True) -> None:
        """Stop heartbeats, release held work, mark the worker stopped, free connections.

        Idempotent. A host's engine is left open; an engine pgqrs created is disposed.

        Args:
            release_held: give held messages back at once (default). With False their
                leases simply run out, as after a crash.
        """
        if self._closed:
            return
        self._closed = True
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            if self._worker_id is not None and self._status is not _STOPPED:
                if release_held:
                    await self._release_held()
                async with self._db.transaction() as conn:
                    await self._workers.transition(conn, self._worker_id,
                                                   allowed_from=(_READY, _SUSPENDED), to=_STOPPED)
                self._status = _STOPPED
        except errors.PgqrsError as exc:
            log.warning("pgqrs could not mark worker %s stopped: %s", self._worker_id, exc)
        finally:
            await self._db.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
