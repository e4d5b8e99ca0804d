"""Statements on ``pgqrs_archive``: listing, dead letters, replay, retention, counts.

Retention deletes in bounded batches; ``approximate_count`` stays cheap at any size.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Text,
    bindparam,
    cast,
    delete,
    func,
    null,
    or_,
    select,
    text,
)

from pgqrs.models import archive_table, messages_table
from pgqrs.repositories._base import Executor, Repository, Statement
from pgqrs.repositories._groups import entering, locked_queue, notified
from pgqrs.repositories.messages import to_archived
from pgqrs.types import ArchivedMessage

_a = archive_table
_m = messages_table


def replay_statement(which: ColumnElement[bool]) -> Any:
    """Put the dead letters matching ``which`` back on their queues as fresh messages.

    A replayed message keeps its queue, payload, producer, priority, headers and group
    (joining the group's end, as a new enqueue would), oldest dead letter first. It does
    not keep its dedup key: the key was free from the moment the message died, and a
    producer may have used it again since. Returns ``SELECT id, ...`` of the new messages,
    NOTIFYing their queues. ``Admin.replay_dlq`` and the dashboard's "replay all" both use
    it, so the two always make the same message.
    """
    replayed = (
        delete(_a).where(which, _a.c.dead_letter.is_(True))
        .returning(_a.c.id, _a.c.queue_id, _a.c.payload, _a.c.producer_worker_id,
                   _a.c.priority, _a.c.headers, _a.c.group_key)
        .cte("replayed")
    )
    rows = select(
        # A queue deleted meanwhile fails the replay (NULL queue_id), archive row kept.
        locked_queue(replayed.c.queue_id).label("queue_id"), replayed.c.payload,
        func.now().label("vt"),
        replayed.c.producer_worker_id, replayed.c.priority, replayed.c.headers,
        replayed.c.group_key, cast(null(), Text).label("dedup_key"),
        replayed.c.id.label("ord"),
    ).cte("rows")
    return notified(entering(rows).cte("changed"))


_REPLAY = Statement(replay_statement(_a.c.id == bindparam("p_id")))

_CUTOFF = bindparam("p_cutoff", type_=DateTime(timezone=True))
# A purge batch looks at the next ``p_limit`` rows of one queue in id order (the
# (queue_id, id) index, from a keyset position) and deletes those archived before the
# cutoff. Ids and archived_at grow together, so the old rows come first; a window with no
# old row at all means the young edge is reached. A batch thus costs the same however big
# the archive is, and never walks what earlier batches deleted.
_window = (
    select(_a.c.id, _a.c.archived_at, _a.c.dead_letter)
    .where(_a.c.queue_id == bindparam("p_queue_id", type_=BigInteger),
           _a.c.id > bindparam("p_after", type_=BigInteger))
    .order_by(_a.c.id)
    .limit(bindparam("p_limit"))
    .cte("window")
)
_deleted = (
    delete(_a)
    .where(_a.c.id == _window.c.id, _window.c.archived_at < _CUTOFF,
           or_(bindparam("p_dead", type_=Boolean), _window.c.dead_letter.is_(False)))
    .returning(_a.c.id)
    .cte("deleted")
)
_PURGE_BATCH = select(
    select(func.max(_window.c.id)).scalar_subquery().label("last"),
    select(func.count()).select_from(_window).scalar_subquery().label("seen"),
    select(func.count()).select_from(_window).where(_window.c.archived_at < _CUTOFF)
    .scalar_subquery().label("old"),
    select(func.count()).select_from(_deleted).scalar_subquery().label("deleted"),
)
_PURGE_COUNT = select(func.count()).select_from(_a).where(
    _a.c.queue_id == bindparam("p_queue_id", type_=BigInteger), _a.c.archived_at < _CUTOFF,
    or_(bindparam("p_dead", type_=Boolean), _a.c.dead_letter.is_(False)))

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

class PurgeBatch(NamedTuple):
    """What one purge batch saw and did."""

    last: int | None
    """The highest id looked at (the next batch's keyset position); None: none left."""
    seen: int
    """Rows looked at (fewer than the limit: the queue's end was reached)."""
    old: int
    """Rows among them archived before the cutoff (0: the young edge was reached)."""
    deleted: int
    """Rows deleted (old ones, less spared dead letters)."""


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

    async def purge_batch(self, executor: Executor, *, queue_id: int, cutoff: datetime,
                          after: int, dead_letters: bool, limit: int) -> PurgeBatch:
        """Look at the queue's next ``limit`` rows after id ``after``; delete the old ones.

        Old: archived before ``cutoff`` (dead letters only with ``dead_letters``).
        """
        row = (await self._execute(executor, _PURGE_BATCH, {
            "p_queue_id": queue_id, "p_cutoff": cutoff, "p_after": after,
            "p_dead": dead_letters, "p_limit": limit,
        })).one()
        return PurgeBatch(last=row.last, seen=row.seen, old=row.old, deleted=row.deleted)

    async def purge_count(self, executor: Executor, *, queue_id: int, cutoff: datetime,
                          dead_letters: bool) -> int:
        """How many of the queue's rows are older than ``cutoff`` (a purge's dry run)."""
        result = await self._execute(executor, _PURGE_COUNT, {
            "p_queue_id": queue_id, "p_cutoff": cutoff, "p_dead": dead_letters,
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
