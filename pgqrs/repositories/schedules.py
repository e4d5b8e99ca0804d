"""Statements on ``pgqrs_schedules``: recurring messages and their exactly-once ticks.

A tick is enqueued by ``advance``: a compare-and-set of ``next_run`` from the tick being
enqueued to the following one, and the INSERT of the message, in the caller's one
transaction. Two runners racing for the same tick both run the ``UPDATE``; the second
waits for the first's row lock, then finds ``next_run`` moved on and changes nothing, so
it enqueues nothing. A crash before the commit undoes both the move and the message.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Text, bindparam, case, cast, delete, func, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pgqrs._schedule import ScheduleInfo
from pgqrs._validation import Options
from pgqrs.models import queues_table, schedules_table
from pgqrs.repositories._base import EncodedJSONB, Executor, Repository
from pgqrs.repositories.messages import MessageRepository

_s = schedules_table
_q = queues_table

_COLUMNS = (*_s.c, _q.c.queue_name)
_JOINED = _s.join(_q, _q.c.id == _s.c.queue_id)
_ID = bindparam("p_id", type_=BigInteger)

_insert = pg_insert(_s).values(
    name=bindparam("p_name"), queue_id=bindparam("p_queue_id"), cron=bindparam("p_cron"),
    timezone=bindparam("p_timezone"), payload=bindparam("p_payload", type_=EncodedJSONB),
    headers=bindparam("p_headers", type_=JSONB), catch_up=bindparam("p_catch_up"),
    next_run=bindparam("p_next_run"),
)
_same_ticks = (_s.c.cron == _insert.excluded.cron) & (_s.c.timezone == _insert.excluded.timezone)
# Redefining a schedule with the same ticks keeps its next_run: an application that
# declares its schedules at every start neither loses nor repeats a tick.
_UPSERT = _insert.on_conflict_do_update(
    index_elements=["name"],
    set_={
        "queue_id": _insert.excluded.queue_id, "cron": _insert.excluded.cron,
        "timezone": _insert.excluded.timezone, "payload": _insert.excluded.payload,
        "headers": _insert.excluded.headers, "catch_up": _insert.excluded.catch_up,
        "next_run": case((_same_ticks, _s.c.next_run), else_=_insert.excluded.next_run),
    },
).returning(_s.c.id)

# One due schedule, locked: runners share the due ones out instead of queueing on them.
_DUE = (
    select(_s.c.id, _s.c.name, _s.c.cron, _s.c.timezone, _s.c.catch_up, _s.c.next_run,
           func.now().label("now"))
    .where(_s.c.next_run <= func.now())
    .order_by(_s.c.next_run)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_SOONEST = select(func.extract("epoch", func.min(_s.c.next_run) - func.now()))
_ADVANCE = (
    update(_s)
    .where(_s.c.id == _ID, _s.c.next_run == bindparam("p_due"))
    .values(next_run=bindparam("p_next"), last_run_at=bindparam("p_due"))
    .returning(_s.c.queue_id, cast(_s.c.payload, Text).label("payload"),
               cast(_s.c.headers, Text).label("headers"))
)
_RECORD = update(_s).where(_s.c.id == _ID).values(last_message_id=bindparam("p_message_id"))


def _info(row: Mapping[Any, Any]) -> ScheduleInfo:
    return ScheduleInfo(
        id=row["id"], name=row["name"], queue_name=row["queue_name"], cron=row["cron"],
        timezone=row["timezone"], payload=row["payload"], headers=row["headers"],
        catch_up=row["catch_up"], next_run=row["next_run"], last_run_at=row["last_run_at"],
        last_message_id=row["last_message_id"], created_at=row["created_at"],
    )


class ScheduleRepository(Repository):
    """Recurring messages: define, list, remove, and enqueue their due ticks."""

    async def now(self, executor: Executor) -> datetime:
        """The database clock (the transaction's ``now()``)."""
        return (await self._execute(executor, select(func.now()))).scalar_one()  # type: ignore[no-any-return]

    async def upsert(self, executor: Executor, *, name: str, queue_id: int, cron: str,
                     timezone: str, payload: str, headers: Mapping[str, str] | None,
                     catch_up: bool, next_run: datetime) -> ScheduleInfo:
        """Create or redefine the schedule ``name`` (``payload`` already encoded)."""
        result = await self._execute(executor, _UPSERT, {
            "p_name": name, "p_queue_id": queue_id, "p_cron": cron, "p_timezone": timezone,
            "p_payload": payload, "p_headers": dict(headers) if headers is not None else None,
            "p_catch_up": catch_up, "p_next_run": next_run,
        })
        info = await self.get(executor, name, by_id=result.scalar_one())
        assert info is not None
        return info

    async def get(self, executor: Executor, name: str, *,
                  by_id: int | None = None) -> ScheduleInfo | None:
        """The schedule called ``name`` (or with id ``by_id``), or None."""
        where = _s.c.id == by_id if by_id is not None else _s.c.name == name
        row = (await self._execute(executor, select(*_COLUMNS).select_from(_JOINED)
                                   .where(where))).first()
        return _info(row._mapping) if row is not None else None

    async def list(self, executor: Executor, *,
                   queue_id: int | None = None) -> builtins.list[ScheduleInfo]:
        """Schedules ordered by name, optionally of one queue."""
        stmt = select(*_COLUMNS).select_from(_JOINED).order_by(_s.c.name)
        if queue_id is not None:
            stmt = stmt.where(_s.c.queue_id == queue_id)
        return [_info(r) for r in (await self._execute(executor, stmt)).mappings()]

    async def delete(self, executor: Executor, name: str) -> bool:
        """Delete the schedule ``name``; True if it existed."""
        result = await self._execute(executor,
                                     delete(_s).where(_s.c.name == name).returning(_s.c.id))
        return result.first() is not None

    async def next_due(self, executor: Executor) -> dict[str, Any] | None:
        """Lock one schedule whose ``next_run`` has come (skipping those others hold).

        Returns its ``id``, ``name``, ``cron``, ``timezone``, ``catch_up``, ``next_run``
        and the database's ``now``, or None when nothing is due.
        """
        row = (await self._execute(executor, _DUE)).mappings().first()
        return dict(row) if row is not None else None

    async def seconds_until_next(self, executor: Executor) -> float | None:
        """Seconds until the soonest ``next_run`` (<= 0: due now); None without schedules."""
        value = (await self._execute(executor, _SOONEST)).scalar()
        return None if value is None else float(value)

    async def advance(self, executor: Executor, messages: MessageRepository, *,
                      schedule_id: int, due: datetime, next_run: datetime,
                      enqueue: bool) -> int | None:
        """Move ``next_run`` from ``due`` to ``next_run`` and enqueue the tick's message.

        Both happen in the caller's transaction, or neither (compare-and-set on
        ``next_run``: if another runner moved it first, nothing happens).

        Returns:
            The new message's id; None if the tick was taken already or ``enqueue`` is
            False (a skipped tick).
        """
        row = (await self._execute(executor, _ADVANCE, {
            "p_id": schedule_id, "p_due": due, "p_next": next_run,
        })).first()
        if row is None or not enqueue:
            return None
        message_id = await messages.enqueue(executor, queue_id=row.queue_id,
                                            payload=row.payload,
                                            options=Options(headers=row.headers),
                                            worker_id=None)
        await self._execute(executor, _RECORD, {"p_id": schedule_id,
                                                "p_message_id": message_id})
        return message_id
