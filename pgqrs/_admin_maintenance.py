"""The retention and schedule methods of ``Admin`` (kept here so ``admin`` stays small).

``Admin`` inherits them; they use only what every ``Admin`` has (its backend, settings and
the schema's repositories), declared below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from pgqrs import _db, _retention, _schedule, _validation, repositories
from pgqrs._schedule import ScheduleInfo
from pgqrs.settings import Settings


class AdminMaintenance:
    """Retention and recurring messages: ``Admin.purge_archive``, ``schedule``, ...."""

    settings: Settings
    _db: _db.Backend

    @property
    def _repos(self) -> repositories.Repositories:
        return repositories.for_schema(self.settings.schema)

    async def purge_archive(self, *, queue: str | None = None,
                            older_than: float | timedelta | None = None,
                            dead_letters: bool = True,
                            batch_size: int = _retention.DEFAULT_BATCH_SIZE,
                            dry_run: bool = False,
                            on_batch: Callable[[int], object] | None = None) -> int:
        """Delete archived rows by age, in short batches; return how many went.

        By default each queue's ``retention`` policy decides (queues that keep their
        archive forever are left alone); ``older_than`` applies one age to every queue
        (or to ``queue``). Each batch of at most ``batch_size`` rows is its own short
        transaction on an index, so live producers and consumers never wait on the purge
        for more than one batch. Interrupting it (cancel, Ctrl-C) keeps what was deleted
        and leaves the rest: run it again to go on.

        Example:
            deleted = await admin.purge_archive(older_than=timedelta(days=7))

        Args:
            queue: only this queue (default: all).
            older_than: age in seconds (or a ``timedelta``) beyond which rows go; None
                uses each queue's retention.
            dead_letters: purge dead letters too; False keeps them.
            batch_size: most rows per transaction (1 to 100,000).
            dry_run: only count what would be deleted.
            on_batch: called with the running total after each committed batch.

        Raises:
            ValidationError: a bad ``older_than`` or ``batch_size``.
            QueueNotFoundError: no such queue.
        """
        age, size = _retention.validate(older_than=older_than, batch_size=batch_size)
        repos = self._repos
        queue_id = None
        if queue is not None:
            async with self._db.transaction() as conn:
                queue_id = (await repos.queues.get(conn, _validation.queue_name(queue))).id
        return await _retention.purge(
            self._db.transaction, repos, queue_id=queue_id, older_than=age,
            dead_letters=bool(dead_letters), batch_size=size, dry_run=bool(dry_run),
            on_batch=on_batch)

    async def schedule(self, queue: str, name: str, *, cron: str,
                       payload: dict[str, Any], headers: Mapping[str, str] | None = None,
                       timezone: str = "UTC", catch_up: bool = True) -> ScheduleInfo:
        """Enqueue ``payload`` on ``queue`` at every tick of ``cron`` (a recurring message).

        The maintenance runner (``pgqrs maintain``, or ``consume(maintenance=True)``)
        enqueues each tick exactly once, however many runners there are. Calling this
        again with the same ``name`` redefines the schedule; if ``cron`` and ``timezone``
        are unchanged, its next tick is kept (safe to call at every application start).

        Example:
            await admin.schedule("reports", "nightly", cron="0 2 * * *",
                                 payload={"report": "daily"}, timezone="Europe/Paris")

        Args:
            queue: an existing queue.
            name: the schedule's unique name.
            cron: five fields (minute hour day month weekday), or six with seconds first.
            payload: the message (a JSON object, checked like an enqueue's).
            headers: small ``str -> str`` map stored with the schedule.
            timezone: IANA zone the expression is read in (default UTC).
            catch_up: ticks missed while no runner ran are enqueued once when one runs
                again (True), or skipped (False). A tick is missed once the next one has
                come due too.

        Raises:
            ValidationError: a bad name, expression, zone, payload or headers.
            QueueNotFoundError: no such queue.
        """
        name = _schedule.validate_name(name)
        cron, timezone = _schedule.validate_cron(cron, timezone)
        encoded = _validation.encode_payload(payload, max_bytes=self.settings.max_payload_bytes,
                                             max_depth=self.settings.max_payload_depth)
        if headers is not None:
            _validation.encode_headers(headers)  # the rules of message headers
            headers = dict(headers)
        repos = self._repos
        async with self._db.transaction() as conn:
            target = await repos.queues.get(conn, _validation.queue_name(queue))
            now = await repos.schedules.now(conn)
            return await repos.schedules.upsert(
                conn, name=name, queue_id=target.id, cron=cron, timezone=timezone,
                payload=encoded, headers=headers, catch_up=bool(catch_up),
                next_run=_schedule.next_tick(cron, timezone, now))

    async def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name``; False if there was none."""
        name = _schedule.validate_name(name)
        async with self._db.transaction() as conn:
            return await self._repos.schedules.delete(conn, name)

    async def get_schedule(self, name: str) -> ScheduleInfo | None:
        """The schedule called ``name``, or None."""
        name = _schedule.validate_name(name)
        async with self._db.transaction() as conn:
            return await self._repos.schedules.get(conn, name)

    async def list_schedules(self, queue: str | None = None) -> list[ScheduleInfo]:
        """Every schedule (or those of ``queue``), ordered by name."""
        repos = self._repos
        async with self._db.transaction() as conn:
            queue_id = None
            if queue is not None:
                queue_id = (await repos.queues.get(conn, _validation.queue_name(queue))).id
            return await repos.schedules.list(conn, queue_id=queue_id)

