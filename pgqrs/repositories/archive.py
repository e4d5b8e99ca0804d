"""Statements on ``pgqrs_archive``: listing, dead letters, replay, retention, counts.

Retention deletes in bounded batches; ``approximate_count`` stays cheap at any size.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
)

from pgqrs.models import archive_table, messages_table
from pgqrs.repositories._base import Executor, Repository, Statement
from pgqrs.repositories.messages import notifying, to_archived
from pgqrs.types import ArchivedMessage

_a = archive_table
_m = messages_table

_replayed = (
    delete(_a)
    .where(_a.c.id == bindparam("p_id"), _a.c.dead_letter.is_(True))
    .returning(_a.c.queue_id, _a.c.payload, _a.c.producer_worker_id)
    .cte("replayed")
)
_REPLAY = Statement(notifying(
    insert(_m)
    .from_select(
        ["queue_id", "payload", "producer_worker_id"],
        select(_replayed.c.queue_id, _replayed.c.payload, _replayed.c.producer_worker_id),
    )
    .returning(_m.c.id, _m.c.queue_id)
))

_BEFORE_ALL = 2**63 - 1
"""An id bound above every id (``bigint``'s largest)."""
# A purge batch: the oldest purgeable rows of one queue after a keyset position, walked on
# the (queue_id, id) index between two ids, so a batch costs the same however big the
# archive is and never rescans what earlier batches deleted. ``archived_at`` decides what
# goes; the id bounds only keep the walk short (see ``purge_boundary``).
_purgeable = (
    select(_a.c.id)
    .where(
        _a.c.queue_id == bindparam("p_queue_id", type_=BigInteger),
        _a.c.id > bindparam("p_after", type_=BigInteger),
        _a.c.id < bindparam("p_before", type_=BigInteger),
        _a.c.archived_at < bindparam("p_cutoff", type_=DateTime(timezone=True)),
        or_(bindparam("p_dead", type_=Boolean), _a.c.dead_letter.is_(False)),
    )
)
_batch = _purgeable.order_by(_a.c.id).limit(bindparam("p_limit")).cte("batch")
_PURGE_BATCH = delete(_a).where(_a.c.id == _batch.c.id).returning(_a.c.id)
_PURGE_COUNT = select(func.count()).select_from(_purgeable.subquery())
_BOUNDARY = (select(_a.c.id).where(_a.c.archived_at >= bindparam("p_cutoff"))
             .order_by(_a.c.archived_at).limit(1))

# Exact up to a limit, then the planner's estimate: the count walks at most ``limit``
# index entries, whatever the archive's size. The estimate is the table's rows now
# (pg_class.reltuples / relpages, scaled to its current size, as the planner does) times
# the queue's share in ANALYZE's most-common-values of queue_id; before any ANALYZE the
# count is exact. The same method as the Prometheus collector (pgqrs.prometheus._query).
_APPROXIMATE = """
WITH capped AS (
    SELECT count(*) AS n FROM (
        SELECT 1 FROM {s}.pgqrs_archive a WHERE {where} LIMIT :exact_limit) t
), total AS (
    SELECT CASE WHEN c.reltuples >= 0 AND c.relpages > 0
                THEN c.reltuples / c.relpages
                     * (pg_relation_size(c.oid) / current_setting('block_size')::float8)
           END AS n
    FROM pg_class c WHERE c.oid = to_regclass(:archive_table)
), mcv AS (
    SELECT v.queue_id, v.share
    FROM pg_stats st,
         unnest(st.most_common_vals::text::bigint[], st.most_common_freqs)
             AS v(queue_id, share)
    WHERE st.schemaname = :schema AND st.tablename = 'pgqrs_archive'
      AND st.attname = 'queue_id' AND NOT st.inherited
)
SELECT CASE
    WHEN (SELECT n FROM capped) < :exact_limit THEN (SELECT n FROM capped)
    WHEN (SELECT n FROM total) IS NULL
        THEN (SELECT count(*) FROM {s}.pgqrs_archive a WHERE {where})
    WHEN CAST(:queue_id AS bigint) IS NULL
        THEN greatest(:exact_limit, round((SELECT n FROM total))::bigint)
    ELSE greatest(:exact_limit, round((SELECT n FROM total) * coalesce(
        (SELECT share FROM mcv WHERE mcv.queue_id = :queue_id),
        (1 - coalesce((SELECT sum(share) FROM mcv), 0))
        / greatest((SELECT count(*) FROM {s}.pgqrs_queues)
                   - (SELECT count(*) FROM mcv), 1)))::bigint)
END
"""

EXACT_COUNT_LIMIT = 10_000
"""Archived rows counted exactly by ``approximate_count``; above, the planner's estimate."""


class ArchiveRepository(Repository):
    """Archived messages: successes and dead letters."""

    def _where(self, queue_id: int | None, worker_id: int | None,
               dead: bool | None) -> builtins.list[Any]:
        where: builtins.list[Any] = []
        if queue_id is not None:
            where.append(_a.c.queue_id == queue_id)
        if worker_id is not None:
            where.append(_a.c.consumer_worker_id == worker_id)
        if dead is not None:
            where.append(_a.c.dead_letter.is_(dead))
        return where

    async def list(self, executor: Executor, *, queue_id: int | None = None,
                   worker_id: int | None = None, dead: bool | None = None,
                   limit: int | None = None, offset: int = 0) -> builtins.list[ArchivedMessage]:
        """Archived messages, oldest first, filtered as given."""
        stmt = (select(*_a.c).where(*self._where(queue_id, worker_id, dead))
                .order_by(_a.c.id).limit(limit).offset(offset))
        return [to_archived(r) for r in (await self._execute(executor, stmt)).mappings()]

    async def count(self, executor: Executor, *, queue_id: int | None = None,
                    worker_id: int | None = None, dead: bool | None = None) -> int:
        """Number of archived messages, filtered as given."""
        stmt = select(func.count()).select_from(_a).where(*self._where(queue_id, worker_id,
                                                                       dead))
        return int((await self._execute(executor, stmt)).scalar_one())

    async def get(self, executor: Executor, archive_id: int) -> ArchivedMessage | None:
        """The archive row with this id, or None."""
        row = (await self._execute(executor, select(*_a.c).where(_a.c.id == archive_id))).first()
        return to_archived(row._mapping) if row is not None else None

    async def delete(self, executor: Executor, archive_id: int) -> bool:
        """Delete one archive row; True if it existed."""
        result = await self._execute(
            executor, delete(_a).where(_a.c.id == archive_id).returning(_a.c.id)
        )
        return result.first() is not None

    async def delete_by_worker(self, executor: Executor, worker_id: int) -> int:
        """Delete the archive rows a worker consumed; return how many."""
        result = await self._execute(
            executor, delete(_a).where(_a.c.consumer_worker_id == worker_id).returning(_a.c.id)
        )
        return len(result.all())

    async def replay(self, executor: Executor, archive_id: int) -> int | None:
        """Put a dead letter back on its queue as a fresh message; its new id, or None."""
        rows = await self._rows(executor, _REPLAY, {"p_id": archive_id,
                                                    "p_channel": self.channel})
        return int(rows[0]["id"]) if rows else None

    async def counts_by_queue(self, executor: Executor) -> dict[int, int]:
        """Archived rows per queue id."""
        stmt = select(_a.c.queue_id, func.count()).group_by(_a.c.queue_id)
        rows: Any = (await self._execute(executor, stmt)).all()
        return {int(q): int(n) for q, n in rows}

    # -- retention ----------------------------------------------------------------------

    async def purge_boundary(self, executor: Executor, cutoff: datetime) -> int:
        """An id below which a purge up to ``cutoff`` need look (one index probe).

        The id of the oldest row archived at or after ``cutoff``, or above every id. Ids
        and ``archived_at`` grow together but not strictly (``archived_at`` is the
        archiving transaction's start), so a row archived before ``cutoff`` with a later
        id is left for the next purge; the ``archived_at`` test, not this bound, decides.
        """
        row = (await self._execute(executor, _BOUNDARY, {"p_cutoff": cutoff})).first()
        return int(row[0]) if row is not None else _BEFORE_ALL

    async def purge_batch(self, executor: Executor, *, queue_id: int, cutoff: datetime,
                          after: int, before: int, dead_letters: bool,
                          limit: int) -> builtins.list[int]:
        """Delete up to ``limit`` of the queue's rows archived before ``cutoff``.

        Only ids in (``after``, ``before``) are looked at, oldest first; dead letters
        only with ``dead_letters``. Returns the deleted ids (the next ``after`` is their
        maximum); fewer than ``limit`` means the range is done.
        """
        result = await self._execute(executor, _PURGE_BATCH, {
            "p_queue_id": queue_id, "p_cutoff": cutoff, "p_after": after,
            "p_before": before, "p_dead": dead_letters, "p_limit": limit,
        })
        return [int(i) for i in result.scalars()]

    async def purge_count(self, executor: Executor, *, queue_id: int, cutoff: datetime,
                          before: int, dead_letters: bool) -> int:
        """How many rows ``purge_batch`` calls over the whole range would delete."""
        result = await self._execute(executor, _PURGE_COUNT, {
            "p_queue_id": queue_id, "p_cutoff": cutoff, "p_after": 0, "p_before": before,
            "p_dead": dead_letters,
        })
        return int(result.scalar_one())

    async def approximate_count(self, executor: Executor, *, queue_id: int | None = None,
                                exact_limit: int = EXACT_COUNT_LIMIT) -> int:
        """Archived rows (of one queue, or all): exact up to ``exact_limit``, else estimated.

        Costs at most ``exact_limit`` index entries, however big the archive is. Above the
        limit the figure is the planner's estimate (never below the limit), which tracks
        the table after each ANALYZE (autovacuum runs one as the table grows).
        """
        quoted = f'"{self.schema}"'
        where = "true" if queue_id is None else "a.queue_id = :queue_id"
        result = await self._execute(
            executor, text(_APPROXIMATE.format(s=quoted, where=where)),
            {"exact_limit": exact_limit, "queue_id": queue_id, "schema": self.schema,
             "archive_table": f"{quoted}.pgqrs_archive"})
        return int(result.scalar_one())
