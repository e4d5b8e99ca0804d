"""Statements on ``pgqrs_queues``."""

from __future__ import annotations

import builtins

from sqlalchemy import bindparam, delete, func, insert, select

from pgqrs import errors
from pgqrs.models import archive_table, messages_table, queues_table, workers_table
from pgqrs.repositories._base import Executor, Repository
from pgqrs.types import QueueInfo, WorkerStatus

_queues = queues_table
_messages = messages_table
_archive = archive_table
_workers = workers_table

_CREATE = insert(_queues).values(queue_name=bindparam("p_name")).returning(*_queues.c)
_BY_NAME = select(*_queues.c).where(_queues.c.queue_name == bindparam("p_name"))
_BY_ID = select(*_queues.c).where(_queues.c.id == bindparam("p_id"))
_LOCK_BY_NAME = _BY_NAME.with_for_update()


def _info(row: object) -> QueueInfo:
    return QueueInfo(id=row.id, queue_name=row.queue_name, created_at=row.created_at)  # type: ignore[attr-defined]


class QueueRepository(Repository):
    """Create, look up, list, delete and purge queues."""

    async def create(self, executor: Executor, name: str) -> QueueInfo:
        """Insert a queue; a duplicate name raises ``QueueAlreadyExistsError``."""
        result = await self._execute(executor, _CREATE, {"p_name": name}, queue_name=name)
        return _info(result.one())

    async def find(self, executor: Executor, name: str) -> QueueInfo | None:
        """The queue called ``name``, or None."""
        row = (await self._execute(executor, _BY_NAME, {"p_name": name})).first()
        return _info(row) if row is not None else None

    async def get(self, executor: Executor, name: str) -> QueueInfo:
        """The queue called ``name``; raises ``QueueNotFoundError``."""
        info = await self.find(executor, name)
        if info is None:
            raise errors.QueueNotFoundError(name)
        return info

    async def get_by_id(self, executor: Executor, queue_id: int) -> QueueInfo | None:
        """The queue with this id, or None."""
        row = (await self._execute(executor, _BY_ID, {"p_id": queue_id})).first()
        return _info(row) if row is not None else None

    async def list(self, executor: Executor, limit: int | None = None,
                   offset: int = 0) -> builtins.list[QueueInfo]:
        """Queues ordered by id."""
        stmt = select(*_queues.c).order_by(_queues.c.id).limit(limit).offset(offset)
        return [_info(r) for r in await self._execute(executor, stmt)]

    async def count(self, executor: Executor) -> int:
        """Number of queues."""
        stmt = select(func.count()).select_from(_queues)
        return int((await self._execute(executor, stmt)).scalar_one())

    async def delete(self, executor: Executor, name: str) -> None:
        """Delete an idle queue with its archive and stopped workers.

        Raises:
            QueueNotFoundError: no such queue.
            QueueInUseError: live workers or messages remain.
        """
        row = (await self._execute(executor, _LOCK_BY_NAME, {"p_name": name})).first()
        if row is None:
            raise errors.QueueNotFoundError(name)
        messages = (await self._execute(
            executor,
            select(func.count()).select_from(_messages).where(_messages.c.queue_id == row.id),
        )).scalar_one()
        live = (await self._execute(
            executor,
            select(func.count()).select_from(_workers).where(
                _workers.c.queue_id == row.id, _workers.c.status != WorkerStatus.STOPPED
            ),
        )).scalar_one()
        if messages or live:
            raise errors.QueueInUseError(name, messages=int(messages), live_workers=int(live))
        await self._execute(executor, delete(_archive).where(_archive.c.queue_id == row.id))
        await self._execute(executor, delete(_queues).where(_queues.c.id == row.id))

    async def purge(self, executor: Executor, queue_id: int) -> int:
        """Delete the queue's messages and archive rows; return how many rows went."""
        live = await self._execute(
            executor, delete(_messages).where(_messages.c.queue_id == queue_id)
        )
        archived = await self._execute(
            executor, delete(_archive).where(_archive.c.queue_id == queue_id)
        )
        return int(live.rowcount) + int(archived.rowcount)  # type: ignore[attr-defined]
