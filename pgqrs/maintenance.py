"""Maintenance that runs itself: one routine, exactly one active runner at a time.

A round applies each queue's archive retention, archives dead letters, reclaims the
messages of zombie workers (stale heartbeats), deletes long-stopped workers, and between
rounds enqueues the due ticks of recurring messages (``Admin.schedule``). Run it with
``pgqrs maintain``, with ``Consumer.consume(..., maintenance=True)``, or embed a
``Maintenance`` yourself.

Any number of runners may run, in any number of processes and machines: they share one
lease row (``pgqrs_maintenance``) and only its holder acts. Every action is a transaction
that starts by checking and extending the lease (``LeaseRepository.fence``); the row lock
this takes lasts until the action commits, so two actions never overlap and a runner whose
lease ran out (stalled, partitioned, killed) acts no more. A runner that dies stops
renewing; the lease runs out after ``lease`` seconds and another runner takes over within
a third of that again. A runner that stops cleanly gives the lease up at once.

Why a lease row rather than a session-level advisory lock: the lock lives as long as the
holder's connection, which (a) behind pgbouncer in transaction-pooling mode belongs to no
client in particular, so two runners could both "hold" it, and (b) on a host that vanishes
without closing its sockets stays held until TCP keepalive gives up (two hours by
default). The lease is plain rows and row locks, correct through any pooler, and bounded
by its length whatever happens to the holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from pgqrs import _db, _retention, _schedule, _validation, errors, repositories
from pgqrs.repositories import Executor
from pgqrs.settings import Settings

log = logging.getLogger("pgqrs.maintenance")

DEFAULT_INTERVAL = 60.0
"""Seconds between rounds."""
DEFAULT_PURGE_WORKERS_AFTER = 7 * 86400.0
"""Seconds a stopped worker's row is kept (by its last heartbeat) before a round deletes it."""
_MAX_LEASE = 30.0
MAX_CATCH_UP = 1000
"""Most missed ticks of one schedule enqueued on catch-up (the latest ones); older are
skipped, so a runner back after a long outage does not flood the queue."""
_EARLY = 0.005
"""Seconds added to a wait for a schedule's tick, so the runner never wakes just before."""


@dataclasses.dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one round did (the counts are also logged)."""

    runner: str
    scheduled: int = 0
    """Messages enqueued for schedule ticks (including those between rounds)."""
    skipped_ticks: int = 0
    """Missed ticks of ``catch_up=False`` schedules, skipped."""
    reclaimed_workers: int = 0
    """Workers with a stale heartbeat, marked stopped."""
    reclaimed_messages: int = 0
    """Messages those workers held, released."""
    dead_lettered: int = 0
    """Dead letters moved to the archive."""
    purged_workers: int = 0
    """Stopped workers deleted."""
    purged_archive: int = 0
    """Archived rows deleted by retention."""
    seconds: float = 0.0
    """How long the round took."""


class _LostLease(Exception):
    """Another runner holds the lease now (ours ran out): stop acting."""


class Maintenance:
    """Runs the maintenance routine; one runner at a time acts, the others stand by.

    Example:
        async with Maintenance("postgresql://localhost/mydb", interval=30) as runner:
            await runner.run(stop_event)        # until stop_event is set (or cancelled)

    Args:
        dsn: a PostgreSQL URL, or the application's ``AsyncEngine`` (never disposed).
        interval: seconds between rounds (retention, dead letters, zombie reclaim, old
            workers). Schedule ticks are enqueued when due, in between.
        lease: seconds a runner's lease lasts without renewal, hence how soon another
            runner takes over from one that died (default: 3/4 of ``interval``, at most
            30 s). The holder renews it every third of that.
        batch_size: rows per retention transaction.
        purge_workers_after: delete stopped workers silent for this many seconds (None:
            never).
        name: this runner's id in the lease row and the logs (default host:pid:random).
        **options: ``Settings`` options (``schema``, ``stale_after``, ...); zombie reclaim
            uses ``stale_threshold`` (``stale_after``, else three heartbeat intervals).
    """

    def __init__(self, dsn: str | AsyncEngine, *, interval: float = DEFAULT_INTERVAL,
                 lease: float | None = None,
                 batch_size: int = _retention.DEFAULT_BATCH_SIZE,
                 purge_workers_after: float | None = DEFAULT_PURGE_WORKERS_AFTER,
                 name: str | None = None, **options: Any) -> None:
        settings = Settings.build(**options)
        self._setup(_db.open_backend(dsn, settings), settings, owned=True,
                    interval=interval, lease=lease, batch_size=batch_size,
                    purge_workers_after=purge_workers_after, name=name)

    def _setup(self, backend: _db.Backend, settings: Settings, *, owned: bool,
               interval: float, lease: float | None, batch_size: int,
               purge_workers_after: float | None, name: str | None) -> None:
        self.interval = _validation.seconds("interval", interval, allow_zero=False)
        lease = min(_MAX_LEASE, 0.75 * self.interval) if lease is None else lease
        self.lease = _validation.seconds("lease", lease, allow_zero=False)
        _, self.batch_size = _retention.validate(older_than=None, batch_size=batch_size)
        self.purge_workers_after = (None if purge_workers_after is None else
                                    _validation.seconds("purge_workers_after",
                                                        purge_workers_after, allow_zero=False))
        if name is not None and (not isinstance(name, str) or not name.strip()
                                 or not name.isprintable() or len(name) > 200):
            raise errors.ValidationError(f"name must be a short printable str, got {name!r:.40}")
        self.runner_id = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        """This runner's id (in ``pgqrs_maintenance.holder`` while it leads)."""
        self.settings = settings
        self._db = backend
        self._owned = owned
        self._repos = repositories.for_schema(settings.schema)
        self._leading = False
        self._next_round = 0.0
        self._scheduled = self._skipped = 0
        self._catch_up_from: dict[int, datetime] = {}

    @classmethod
    def sharing(cls, backend: _db.Backend, *, interval: float = DEFAULT_INTERVAL,
                **kwargs: Any) -> Maintenance:
        """A runner on another client's backend (``Consumer.consume(maintenance=...)``)."""
        runner = cls.__new__(cls)
        runner._setup(backend, backend.settings, owned=False, interval=interval,
                      lease=kwargs.get("lease"),
                      batch_size=kwargs.get("batch_size", _retention.DEFAULT_BATCH_SIZE),
                      purge_workers_after=kwargs.get("purge_workers_after",
                                                     DEFAULT_PURGE_WORKERS_AFTER),
                      name=kwargs.get("name"))
        return runner

    def __repr__(self) -> str:
        return f"Maintenance(runner_id={self.runner_id!r}, interval={self.interval})"

    @property
    def leading(self) -> bool:
        """True while this runner holds the lease (as far as it knows)."""
        return self._leading

    # -- running ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Stand by, lead when the lease is free, and run rounds until ``stop`` is set.

        Cancelling the task also stops it. Either way the current transaction finishes
        (or rolls back) and the lease is given up, so another runner takes over at once.
        """
        stop = stop if stop is not None else asyncio.Event()
        log.info("pgqrs maintenance runner %s started (interval %gs, lease %gs)",
                 self.runner_id, self.interval, self.lease)
        try:
            while not stop.is_set():
                wait = await self._step(stop)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            await asyncio.shield(self._release())
            log.info("pgqrs maintenance runner %s stopped", self.runner_id)

    async def run_once(self) -> MaintenanceReport | None:
        """Run one round now if no other runner holds the lease; then give it up.

        For deployments that prefer an external scheduler (cron, a Kubernetes CronJob)
        to a long-running runner. Returns the round's report, or None if another runner
        is leading (it does the work).
        """
        try:
            if not await self._acquire():
                return None
            await self._enqueue_due()
            return await self._round(None)
        except _LostLease:
            self._leading = False
            return None
        finally:
            await self._release()

    async def _step(self, stop: asyncio.Event) -> float:
        """One wake-up: acquire or renew, enqueue due ticks, run a round if due; the wait."""
        poll = self.lease / 3
        try:
            if not self._leading and not await self._acquire():
                return poll
            until_tick = await self._enqueue_due()
            if time.monotonic() >= self._next_round:
                await self._round(stop)
                self._next_round = time.monotonic() + self.interval
                until_tick = await self._enqueue_due()
        except _LostLease:
            log.warning("pgqrs maintenance runner %s lost the lease (another runner took "
                        "over after it ran out); standing by", self.runner_id)
            self._leading = False
            return poll
        except errors.DatabaseError as exc:
            log.warning("pgqrs maintenance runner %s: %s; retrying in %.1fs",
                        self.runner_id, exc, poll)
            self._leading = False
            return poll
        until_round = self._next_round - time.monotonic()
        waits = [poll, until_round] + ([until_tick + _EARLY] if until_tick is not None else [])
        return max(min(waits), 0.0)

    # -- the lease ----------------------------------------------------------------------

    async def _acquire(self) -> bool:
        async with self._db.transaction() as conn:
            acquired = await self._repos.lease.acquire(conn, self.runner_id, self.lease)
        if acquired is not None and not self._leading:
            log.info("pgqrs maintenance runner %s now leads", self.runner_id)
            self._next_round = 0.0  # a new leader starts with a round
        self._leading = acquired is not None
        return self._leading

    @contextlib.asynccontextmanager
    async def _fenced(self) -> AsyncIterator[Executor]:
        """A transaction that acts only if this runner still holds the lease."""
        async with self._db.transaction() as conn:
            if not await self._repos.lease.fence(conn, self.runner_id, self.lease):
                raise _LostLease
            yield conn

    async def _release(self) -> None:
        if not self._leading:
            return
        self._leading = False
        try:
            async with self._db.transaction() as conn:
                await self._repos.lease.release(conn, self.runner_id)
        except errors.PgqrsError as exc:  # it runs out by itself
            log.warning("pgqrs maintenance runner %s could not give up the lease: %s",
                        self.runner_id, exc)

    # -- the actions --------------------------------------------------------------------

    async def _enqueue_due(self) -> float | None:
        """Enqueue every due tick (one fenced transaction each); seconds to the next."""
        while True:
            async with self._fenced() as conn:
                due = await self._repos.schedules.next_due(conn)
                if due is None:
                    return await self._repos.schedules.seconds_until_next(conn)
                await self._tick(conn, due)

    async def _tick(self, conn: Executor, due: dict[str, Any]) -> None:
        """Enqueue (or skip) the due tick of one locked schedule, in the caller's transaction.

        A tick is *current* while the one after it has not come due yet; it is enqueued and
        ``next_run`` moves to the following tick. Otherwise it was missed (no runner ran
        at its time): with ``catch_up`` it is still enqueued if it is among the latest
        ``MAX_CATCH_UP`` due ticks; without, only the latest due tick is. The ticks before
        are skipped in one step, logged with their number.
        """
        name, cron, zone = due["name"], due["cron"], due["timezone"]
        tick, now = due["next_run"], due["now"]
        try:
            following = _schedule.next_tick(cron, zone, tick)
            oldest_kept = self._catch_up_from.get(due["id"])
            if following <= now and (oldest_kept is None or tick < oldest_kept):
                # Missed: is it within the window of ticks still to enqueue? (Computed once
                # per catch-up, not per tick: the window only moves forward.)
                window = _schedule.latest_ticks(cron, zone, now,
                                                MAX_CATCH_UP if due["catch_up"] else 1)
                if window:
                    self._catch_up_from[due["id"]] = window[-1]
                if window and window[-1] > tick:
                    skipped = _schedule.ticks_between(cron, zone, tick, window[-1])
                    await self._advance(conn, due, window[-1], enqueue=False)
                    self._skipped += skipped
                    log.warning("pgqrs schedule %r: skipped %d missed tick(s) from %s to "
                                "before %s (%s)", name, skipped, tick.isoformat(),
                                window[-1].isoformat(),
                                "catch_up=False" if not due["catch_up"]
                                else f"more than {MAX_CATCH_UP} were missed")
                    return
        except errors.ValidationError as exc:  # edited to nonsense behind pgqrs's back
            log.error("pgqrs schedule %r cannot be evaluated (%s); retrying in a day, or "
                      "when it is redefined with Admin.schedule()", name, exc)
            await self._advance(conn, due, now + timedelta(days=1), enqueue=False)
            return
        message_id = await self._advance(conn, due, following, enqueue=True)
        if message_id is not None:
            self._scheduled += 1
            log.info("pgqrs schedule %r: enqueued message %d for the tick of %s%s", name,
                     message_id, tick.isoformat(),
                     f" ({(now - tick).total_seconds():.1f}s late)"
                     if following <= now else "")

    async def _advance(self, conn: Executor, due: dict[str, Any], next_run: datetime, *,
                       enqueue: bool) -> int | None:
        return await self._repos.schedules.advance(
            conn, self._repos.messages, schedule_id=due["id"], due=due["next_run"],
            next_run=next_run, enqueue=enqueue)

    async def _round(self, stop: asyncio.Event | None) -> MaintenanceReport:
        started = time.monotonic()
        repos = self._repos
        async with self._fenced() as conn:
            stopped = await repos.workers.stop_stale(
                conn, queue_id=None, older_than=self.settings.stale_threshold)
            released = 0
            for worker_id in stopped:
                released += await repos.messages.release_worker(conn, worker_id)
        async with self._fenced() as conn:
            dead = len(await repos.messages.move_dead_letters(conn, queue_id=None))
        purged_workers = 0
        if self.purge_workers_after is not None:
            async with self._fenced() as conn:
                purged_workers = await repos.workers.purge_stopped(conn,
                                                                   self.purge_workers_after)
        purged = await _retention.purge(self._fenced, repos, queue_id=None, older_than=None,
                                        dead_letters=True, batch_size=self.batch_size,
                                        stop=stop)
        async with self._fenced() as conn:
            await repos.lease.finish_round(conn, self.runner_id)
        report = MaintenanceReport(
            runner=self.runner_id, scheduled=self._scheduled, skipped_ticks=self._skipped,
            reclaimed_workers=len(stopped), reclaimed_messages=released,
            dead_lettered=dead, purged_workers=purged_workers, purged_archive=purged,
            seconds=round(time.monotonic() - started, 3))
        self._scheduled = self._skipped = 0
        log.info("pgqrs maintenance round by %s: %d scheduled message(s), %d skipped "
                 "tick(s), %d zombie worker(s) stopped and %d of their message(s) released, "
                 "%d dead letter(s) archived, %d stopped worker(s) deleted, %d archived "
                 "row(s) purged, in %.3fs", report.runner, report.scheduled,
                 report.skipped_ticks, report.reclaimed_workers, report.reclaimed_messages,
                 report.dead_lettered, report.purged_workers, report.purged_archive,
                 report.seconds)
        return report

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Give up the lease if held; dispose the engine pgqrs created. Idempotent."""
        await self._release()
        if self._owned:
            await self._db.dispose()

    async def __aenter__(self) -> Maintenance:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def start(backend: _db.Backend, interval: float, stop: asyncio.Event) -> asyncio.Task[None]:
    """Start a runner sharing ``backend`` as a task (``Consumer.consume``'s opt-in)."""
    runner = Maintenance.sharing(backend, interval=interval)
    return asyncio.create_task(runner.run(stop), name=f"pgqrs-maintenance-{runner.runner_id}")
