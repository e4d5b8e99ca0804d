"""Statements on ``pgqrs_workers``: atomic registration, heartbeats, status, staleness."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Interval,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pgqrs import errors
from pgqrs.models import messages_table, queues_table, workers_table
from pgqrs.repositories._base import Executor, Repository, Statement
from pgqrs.types import WorkerHealthStats, WorkerInfo, WorkerStatus

_w = workers_table
_m = messages_table
_NOW = func.now()
_STALE = bindparam("p_stale", type_=Interval)
_ID = bindparam("p_id", type_=BigInteger)

# One statement: insert a new identity, or take over a stopped/stale row of the same
# identity and release whatever messages it still held. A live row matches nothing, so
# no id comes back and the caller refuses the duplicate.
_insert = pg_insert(_w).values(
    hostname=bindparam("p_hostname"), port=bindparam("p_port"), queue_id=bindparam("p_queue_id"),
    status=WorkerStatus.READY, started_at=_NOW, heartbeat_at=_NOW,
)
_registered = _insert.on_conflict_do_update(
    index_elements=["hostname", "port"],
    set_={
        "queue_id": _insert.excluded.queue_id, "status": WorkerStatus.READY,
        "started_at": _NOW, "heartbeat_at": _NOW, "shutdown_at": null(),
    },
    where=or_(_w.c.status == WorkerStatus.STOPPED, _w.c.heartbeat_at < _NOW - _STALE),
).returning(_w.c.id, _w.c.started_at).cte("registered")
_released = (
    update(_m)
    .where(_m.c.consumer_worker_id == _registered.c.id)
    .values(vt=_NOW, consumer_worker_id=None)
    .returning(_m.c.id)
    .cte("released")
)
_REGISTER = select(
    _registered.c.id, _registered.c.started_at,
    select(func.count()).select_from(_released).scalar_subquery(),
)

# started_at is the registration's token: if another process took the row over, it no
# longer matches and the old holder learns it was replaced.
_HEARTBEAT = Statement(
    update(_w)
    .where(_w.c.id == _ID, _w.c.started_at == bindparam("p_started"))
    .values(heartbeat_at=_NOW)
    .returning(_w.c.status)
)


def _deleting(where: ColumnElement[bool]) -> Any:
    """Delete the workers matching ``where`` and forget their ids in live messages.

    What the foreign keys' ``ON DELETE SET NULL`` did before revision pgqrs_0005 dropped
    them: no live message names a worker that is gone. The worker columns have no index
    (every claim and enqueue would pay for one), so forgetting reads the live table, once
    per statement and only when a worker was deleted (a one-time filter skips it
    otherwise). Archived rows keep the ids: the archive is history.
    """
    gone = delete(_w).where(where).returning(_w.c.id).cte("gone")
    ids = func.array(select(gone.c.id).scalar_subquery())

    def forget(column: Any) -> Any:
        return case((column == any_(ids), null()), else_=column)

    forgotten = (
        update(_m)
        .where(select(gone.c.id).exists(),
               or_(_m.c.producer_worker_id == any_(ids), _m.c.consumer_worker_id == any_(ids)))
        .values(producer_worker_id=forget(_m.c.producer_worker_id),
                consumer_worker_id=forget(_m.c.consumer_worker_id))
        .returning(_m.c.id)
        .cte("forgotten")
    )
    return select(gone.c.id).add_cte(forgotten)


_PURGE_STOPPED = Statement(_deleting(and_(_w.c.status == WorkerStatus.STOPPED,
                                          _w.c.heartbeat_at < _NOW - _STALE)))
_DELETE = Statement(_deleting(_w.c.id == _ID))


def to_worker(row: Mapping[Any, Any]) -> WorkerInfo:
    """Build a ``WorkerInfo`` from a ``pgqrs_workers`` row mapping."""
    return WorkerInfo(
        id=row["id"], hostname=row["hostname"], port=row["port"], queue_id=row["queue_id"],
        started_at=row["started_at"], heartbeat_at=row["heartbeat_at"],
        shutdown_at=row["shutdown_at"], status=WorkerStatus(row["status"]),
    )


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class WorkerRepository(Repository):
    """Worker identities and their lifecycle."""

    async def register(self, executor: Executor, *, hostname: str, port: int,
                       queue_id: int | None, stale_after: float) -> tuple[int, datetime]:
        """Register or take over ``(hostname, port)``; return the id and registration token.

        Raises:
            WorkerAlreadyExistsError: a live worker holds the identity.
        """
        row: Any = (await self._execute(executor, _REGISTER, {
            "p_hostname": hostname, "p_port": port, "p_queue_id": queue_id,
            "p_stale": _seconds(stale_after),
        }, hostname=hostname, port=port)).first()
        if row is None:
            raise errors.WorkerAlreadyExistsError(hostname, port)
        return int(row[0]), row[1]

    async def heartbeat(self, executor: Executor, worker_id: int,
                        started_at: datetime) -> WorkerStatus:
        """Record a heartbeat; return the worker's status as the database sees it.

        Raises:
            WorkerNotFoundError: the row was deleted.
            StateError: another process took the row over (same hostname and port).
        """
        rows = await self._rows(executor, _HEARTBEAT, {
            "p_id": worker_id, "p_started": started_at,
        })
        if rows:
            return WorkerStatus(rows[0]["status"])
        if await self.get(executor, worker_id) is None:
            raise errors.WorkerNotFoundError(worker_id)
        raise errors.StateError.refused(
            "stopped", "heartbeat", f"worker {worker_id} was taken over by another process "
            "with the same hostname and port (this one looked dead); stop using this client")

    async def is_healthy(self, executor: Executor, worker_id: int, *, max_age: float) -> bool:
        """True if the worker is not stopped and beat within ``max_age`` seconds (DB clock)."""
        stmt = select(
            (_w.c.status != WorkerStatus.STOPPED) & (_w.c.heartbeat_at >= _NOW - _STALE)
        ).where(_w.c.id == worker_id)
        result = await self._execute(executor, stmt, {"p_stale": _seconds(max_age)})
        return bool(result.scalar())

    async def get(self, executor: Executor, worker_id: int) -> WorkerInfo | None:
        """The worker with this id, or None."""
        row = (await self._execute(executor, select(*_w.c).where(_w.c.id == worker_id))).first()
        return to_worker(row._mapping) if row is not None else None

    async def transition(self, executor: Executor, worker_id: int, *,
                         allowed_from: Sequence[WorkerStatus],
                         to: WorkerStatus) -> WorkerStatus | None:
        """Move the worker to ``to`` if it is in ``allowed_from``.

        Returns:
            None on success, else the status that prevented the move.

        Raises:
            WorkerNotFoundError: no such worker.
        """
        values: dict[str, Any] = {"status": to}
        if to is WorkerStatus.STOPPED:
            values["shutdown_at"] = _NOW
        stmt = update(_w).where(_w.c.id == worker_id, _w.c.status.in_(list(allowed_from)))
        result = await self._execute(executor, stmt.values(**values).returning(_w.c.id))
        if result.first() is not None:
            return None
        current = await self.get(executor, worker_id)
        if current is None:
            raise errors.WorkerNotFoundError(worker_id)
        return current.status

    async def list(self, executor: Executor, *, queue_id: int | None = None,
                   limit: int | None = None, offset: int = 0) -> builtins.list[WorkerInfo]:
        """Workers ordered by id, optionally of one queue."""
        stmt = select(*_w.c).order_by(_w.c.id).limit(limit).offset(offset)
        if queue_id is not None:
            stmt = stmt.where(_w.c.queue_id == queue_id)
        return [to_worker(r) for r in (await self._execute(executor, stmt)).mappings()]

    async def count(self, executor: Executor, *, queue_id: int | None = None) -> int:
        """Number of workers, optionally of one queue."""
        stmt = select(func.count()).select_from(_w)
        if queue_id is not None:
            stmt = stmt.where(_w.c.queue_id == queue_id)
        return int((await self._execute(executor, stmt)).scalar_one())

    async def stop_stale(self, executor: Executor, *, queue_id: int | None,
                         older_than: float) -> builtins.list[int]:
        """Mark live workers silent for ``older_than`` seconds as stopped; return their ids."""
        stmt = (
            update(_w)
            .where(_w.c.status != WorkerStatus.STOPPED,
                   _w.c.heartbeat_at < _NOW - _STALE)
            .values(status=WorkerStatus.STOPPED, shutdown_at=_NOW)
            .returning(_w.c.id)
        )
        if queue_id is not None:
            stmt = stmt.where(_w.c.queue_id == queue_id)
        result = await self._execute(executor, stmt, {"p_stale": _seconds(older_than)})
        return sorted(int(i) for i in result.scalars())

    async def purge_stopped(self, executor: Executor, older_than: float) -> int:
        """Delete stopped workers whose last heartbeat is older than ``older_than`` seconds."""
        return len(await self._rows(executor, _PURGE_STOPPED,
                                    {"p_stale": _seconds(older_than)}))

    async def delete(self, executor: Executor, worker_id: int) -> bool:
        """Delete one worker row (its ids in live messages forgotten); True if it existed."""
        return bool(await self._rows(executor, _DELETE, {"p_id": worker_id}))

    async def health(self, executor: Executor, *, stale_after: float,
                     by_queue: bool) -> builtins.list[WorkerHealthStats]:
        """Counts per status and of live-but-silent workers, overall or per queue."""
        def count_if(cond: Any) -> Any:
            return func.count(case((cond, 1)))

        live = _w.c.status != WorkerStatus.STOPPED
        columns = [
            func.count().label("total"),
            count_if(_w.c.status == WorkerStatus.READY).label("ready"),
            count_if(_w.c.status == WorkerStatus.SUSPENDED).label("suspended"),
            count_if(_w.c.status == WorkerStatus.STOPPED).label("stopped"),
            count_if(live & (_w.c.heartbeat_at < _NOW - _STALE)).label("stale"),
        ]
        q = queues_table
        if by_queue:
            stmt = (select(q.c.queue_name, *columns)
                    .select_from(_w.outerjoin(q, q.c.id == _w.c.queue_id))
                    .group_by(q.c.queue_name).order_by(q.c.queue_name))
        else:
            stmt = select(*columns).select_from(_w)
        rows = await self._execute(executor, stmt, {"p_stale": _seconds(stale_after)})
        return [
            WorkerHealthStats(
                queue_name=getattr(r, "queue_name", None), total_workers=r.total,
                ready_workers=r.ready, suspended_workers=r.suspended,
                stopped_workers=r.stopped, stale_workers=r.stale,
            )
            for r in rows
        ]
