"""Statements on ``pgqrs_archive``: listing, dead letters, replay, per-worker queries."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import ColumnElement, Text, bindparam, cast, delete, func, null, select

from pgqrs.models import archive_table, messages_table
from pgqrs.repositories._base import Executor, Repository, Statement
from pgqrs.repositories._groups import entering, notified
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
        replayed.c.queue_id, replayed.c.payload, func.now().label("vt"),
        replayed.c.producer_worker_id, replayed.c.priority, replayed.c.headers,
        replayed.c.group_key, cast(null(), Text).label("dedup_key"),
        replayed.c.id.label("ord"),
    ).cte("rows")
    return notified(entering(rows).cte("changed"))


_REPLAY = Statement(replay_statement(_a.c.id == bindparam("p_id")))


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
