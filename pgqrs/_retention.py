"""Retention: delete archived rows older than a cutoff, in short bounded batches.

Shared by ``Admin.purge_archive`` and the maintenance runner. Every batch is its own short
transaction (``begin()``: the runner's also checks its lease) that looks at the next
``batch_size`` rows of one queue on the ``(queue_id, id)`` index, after the previous
batch's last id, and deletes those older than the cutoff. Ids grow with ``archived_at``,
so a batch that finds no old row at all has reached the young end and the purge stops; an
old row archived out of order beyond that point (a long archiving transaction) goes next
time. Nothing is held between batches, so live traffic never waits on a purge for longer
than one batch, WAL comes in small pieces autovacuum keeps up with, and an interrupted
purge leaves what it deleted deleted and the rest in place: run it again to go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

from pgqrs import errors, repositories
from pgqrs.repositories import Executor
from pgqrs.settings import MAX_POLICY_SECONDS

log = logging.getLogger("pgqrs.maintenance")

DEFAULT_BATCH_SIZE = 1000
"""Rows per purge transaction: a few tens of milliseconds of work (docs/benchmarks.md)."""

Begin = Callable[[], AbstractAsyncContextManager[Executor]]
"""Opens one transaction and yields its executor (committed on exit)."""
Progress = Callable[[int], object]
"""Called after each committed batch with the running total."""


@dataclass(frozen=True, slots=True)
class _Target:
    queue_id: int
    queue_name: str
    cutoff: datetime


async def _targets(begin: Begin, repos: repositories.Repositories, *, queue_id: int | None,
                   older_than: float | None) -> list[_Target]:
    """Which queues to purge, each with its cutoff (on the database clock)."""
    async with begin() as conn:
        if queue_id is not None:
            found = await repos.queues.get_by_id(conn, queue_id)
            queues = [found] if found is not None else []
        else:
            queues = await repos.queues.list(conn)
        now = await repos.schedules.now(conn)
    targets = []
    for queue in queues:
        age = older_than if older_than is not None else queue.retention
        if age is not None:  # else kept forever, unless an explicit age says otherwise
            targets.append(_Target(queue.id, queue.queue_name, now - timedelta(seconds=age)))
    return targets


async def purge(begin: Begin, repos: repositories.Repositories, *, queue_id: int | None,
                older_than: float | None, dead_letters: bool, batch_size: int,
                dry_run: bool = False, on_batch: Progress | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Purge archived rows by age; return how many went (or would, with ``dry_run``).

    Args:
        begin: opens each batch's transaction.
        repos: the schema's repositories.
        queue_id: one queue, or None for every queue.
        older_than: age in seconds; None applies each queue's ``retention`` (queues that
            keep rows forever are left alone).
        dead_letters: purge dead letters too (else only processed messages).
        batch_size: most rows per transaction.
        dry_run: count what would go, delete nothing.
        on_batch: called with the running total after each committed batch.
        stop: set it to end after the current batch.
    """
    targets = await _targets(begin, repos, queue_id=queue_id, older_than=older_than)
    if dry_run:
        async with begin() as conn:
            return sum([await repos.archive.purge_count(
                conn, queue_id=t.queue_id, cutoff=t.cutoff, dead_letters=dead_letters)
                for t in targets])
    total = 0
    for target in targets:
        after, deleted = 0, 0
        while stop is None or not stop.is_set():
            async with begin() as conn:
                batch = await repos.archive.purge_batch(
                    conn, queue_id=target.queue_id, cutoff=target.cutoff, after=after,
                    dead_letters=dead_letters, limit=batch_size)
            deleted += batch.deleted
            total += batch.deleted
            if batch.deleted and on_batch is not None:
                on_batch(total)
            # The queue's end, or a whole window of young rows: the rest is younger still.
            if batch.last is None or batch.seen < batch_size or not batch.old:
                break
            after = batch.last
        if deleted:
            log.info("pgqrs retention: purged %d archived row(s) of queue %r older than %s",
                     deleted, target.queue_name, target.cutoff.isoformat())
    return total


def validate(*, older_than: object, batch_size: object) -> tuple[float | None, int]:
    """Check ``purge``'s options given by a user; return them normalised.

    Raises:
        ValidationError: ``older_than`` is not a positive number of seconds (or a
            ``timedelta``), or ``batch_size`` not an int from 1 to 100,000.
    """
    age: float | None = None
    if older_than is not None:
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) \
            else older_than
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                or not 0 < seconds <= MAX_POLICY_SECONDS:
            raise errors.ValidationError(
                f"older_than must be a positive number of seconds (or a timedelta) of at "
                f"most 100 years, got {older_than!r:.40}")
        age = float(seconds)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
            or not 1 <= batch_size <= 100_000:
        raise errors.ValidationError(
            f"batch_size must be an int from 1 to 100000, got {batch_size!r:.40}")
    return age, batch_size
