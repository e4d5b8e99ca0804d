"""Statements on ``pgqrs_messages``: enqueue, the SKIP LOCKED claim, acks and counts.

Every statement is built once at import; the schema map is applied per execution, so
SQLAlchemy's compiled cache serves them all after first use. The hot-path ones are
wrapped in ``Statement`` so they may also run on the driver directly (see ``_base``).
"""

from __future__ import annotations

import builtins
import json
import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Interval,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from pgqrs.models import archive_table, messages_table, queues_table, workers_table
from pgqrs.repositories._base import EncodedJSONB, Executor, Repository, Statement
from pgqrs.types import ArchivedMessage, QueueMessage, WorkerStatus

_m = messages_table
_a = archive_table
_w = workers_table
_q = queues_table

_NOW = func.now()
_IDS = bindparam("p_ids", type_=ARRAY(BigInteger))
_WORKER = bindparam("p_worker_id", type_=BigInteger)
_QUEUE = bindparam("p_queue_id", type_=BigInteger)
_DELAY = bindparam("p_delay", type_=Interval)

_CHANNEL = bindparam("p_channel", type_=Text)


def notifying(statement: Any) -> Any:
    """Wrap a DML ... RETURNING id, queue_id so it also NOTIFYs each queue's channel.

    Used where messages become claimable now (enqueue, release). The notification is part
    of the statement's transaction: a rolled-back enqueue wakes no one, and PostgreSQL
    folds identical notifications of one transaction into one, so a batch wakes once.
    """
    changed = statement.cte("changed")
    return select(changed.c.id,
                  func.pg_notify(_CHANNEL, cast(changed.c.queue_id, Text)).label("notified"))


_ENQUEUE = Statement(notifying(
    insert(_m)
    .values(
        queue_id=_QUEUE,
        payload=bindparam("p_payload", type_=EncodedJSONB),
        vt=_NOW + _DELAY,
        producer_worker_id=_WORKER,
    )
    .returning(_m.c.id, _m.c.queue_id)
))

_batch = (
    func.unnest(bindparam("p_payloads", type_=ARRAY(Text)))
    .table_valued("payload", with_ordinality="ord")
    .render_derived()
)
_ENQUEUE_BATCH = Statement(notifying(
    insert(_m)
    .from_select(
        ["queue_id", "payload", "vt", "producer_worker_id"],
        select(_QUEUE, cast(_batch.c.payload, JSONB), _NOW + _DELAY, _WORKER).order_by(
            _batch.c.ord
        ),
    )
    .returning(_m.c.id, _m.c.queue_id)
))

# The claim: FIFO by id, visible now, attempts left, the queue not paused, and the consumer
# still 'ready' (so a worker suspended from outside stops receiving at once). The threshold
# and the paused flag come from the queue row in this very statement, so a policy change
# reaches running consumers on their next claim. Both lookups are uncorrelated (InitPlans,
# run once): the paused check is a one-time filter, so a paused queue's messages are not
# even scanned, and the threshold is a constant for the index walk.
_queue_row = _q.c.id == _QUEUE
_claimable = (
    select(_m.c.id)
    .where(
        _m.c.queue_id == _QUEUE,
        _m.c.vt <= _NOW,
        _m.c.read_ct < select(_q.c.max_read_ct).where(_queue_row).scalar_subquery(),
        select(_q.c.id).where(_queue_row, _q.c.paused.is_(False)).exists(),
        select(_w.c.id)
        .where(_w.c.id == _WORKER, _w.c.status == WorkerStatus.READY)
        .exists(),
    )
    .order_by(_m.c.id)
    .limit(bindparam("p_limit"))
    .with_for_update(skip_locked=True)
    .cte("claim")
)
# A NULL p_lease means "the queue's visibility_timeout" (another one-time lookup). The
# policy is not returned with the rows: that cost ~10% per claim, and the consume loop
# needs it only when a handler fails (QueueRepository.policy, or retry_or_dead_letter()).
_DEQUEUE = Statement(
    update(_m)
    .where(_m.c.id == _claimable.c.id)
    .values(
        vt=_NOW + func.coalesce(
            bindparam("p_lease", type_=Interval),
            select(_q.c.visibility_timeout).where(_queue_row).scalar_subquery(),
        ),
        read_ct=_m.c.read_ct + 1,
        dequeued_at=_NOW,
        consumer_worker_id=_WORKER,
    )
    .returning(*_m.c)
)

_OWNED = and_(_m.c.id == any_(_IDS), _m.c.consumer_worker_id == _WORKER)

_DELETE = Statement(delete(_m).where(_OWNED).returning(_m.c.id))
_EXTEND = Statement(
    update(_m)
    .where(_m.c.id == bindparam("p_id"), _m.c.consumer_worker_id == _WORKER)
    .values(vt=_NOW + bindparam("p_lease", type_=Interval))
    .returning(_m.c.id)
)
_RELEASE = Statement(notifying(
    update(_m)
    .where(_OWNED)
    .values(vt=_NOW + _DELAY, consumer_worker_id=None)
    .returning(_m.c.id, _m.c.queue_id)
))
_RELEASE_WORKER = Statement(notifying(
    update(_m)
    .where(_m.c.consumer_worker_id == _WORKER)
    .values(vt=_NOW, consumer_worker_id=None)
    .returning(_m.c.id, _m.c.queue_id)
))

_ARCHIVE_COLUMNS = [
    "original_msg_id", "queue_id", "payload", "enqueued_at", "vt", "read_ct", "dequeued_at",
    "producer_worker_id", "consumer_worker_id", "dead_letter",
]


def _archive_statement(where: ColumnElement[bool], *, dead: bool) -> Any:
    """One statement that moves the matching live rows into the archive."""
    moved = delete(_m).where(where).returning(*_m.c).cte("moved")
    rows = select(
        moved.c.id, moved.c.queue_id, moved.c.payload, moved.c.enqueued_at, moved.c.vt,
        moved.c.read_ct, moved.c.dequeued_at, moved.c.producer_worker_id,
        moved.c.consumer_worker_id, literal_column("true" if dead else "false"),
    )
    return insert(_a).from_select(_ARCHIVE_COLUMNS, rows).returning(_a.c.original_msg_id)


_ARCHIVE = Statement(_archive_statement(_OWNED, dead=False))
_ARCHIVE_DEAD = Statement(_archive_statement(_OWNED, dead=True))
_ARCHIVE_ANY = Statement(_archive_statement(_m.c.id == any_(_IDS), dead=False))
_DELETE_ANY = Statement(delete(_m).where(_m.c.id == any_(_IDS)).returning(_m.c.id))
# Dead: as many deliveries as the message's own queue allows, and the lease over. The
# queue table in the WHERE clause makes this DELETE ... USING pgqrs_queues: one join, each
# message measured against its queue's threshold.
_DEAD_ANY_QUEUE = and_(_m.c.queue_id == _q.c.id, _m.c.read_ct >= _q.c.max_read_ct,
                       _m.c.vt <= _NOW)
_DLQ_ALL = _archive_statement(_DEAD_ANY_QUEUE, dead=True)
_DLQ_QUEUE = _archive_statement(and_(_DEAD_ANY_QUEUE, _m.c.queue_id == _QUEUE), dead=True)


def _payload(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def to_message(row: Mapping[Any, Any]) -> QueueMessage:
    """Build a ``QueueMessage`` from a ``pgqrs_messages`` row mapping."""
    return QueueMessage(
        id=row["id"], queue_id=row["queue_id"], payload=_payload(row["payload"]),
        vt=row["vt"], enqueued_at=row["enqueued_at"], read_ct=row["read_ct"],
        dequeued_at=row["dequeued_at"], producer_worker_id=row["producer_worker_id"],
        consumer_worker_id=row["consumer_worker_id"],
    )


def to_archived(row: Mapping[Any, Any]) -> ArchivedMessage:
    """Build an ``ArchivedMessage`` from a ``pgqrs_archive`` row mapping."""
    return ArchivedMessage(
        id=row["id"], original_msg_id=row["original_msg_id"], queue_id=row["queue_id"],
        payload=_payload(row["payload"]), enqueued_at=row["enqueued_at"], vt=row["vt"],
        read_ct=row["read_ct"], archived_at=row["archived_at"],
        dequeued_at=row["dequeued_at"], producer_worker_id=row["producer_worker_id"],
        consumer_worker_id=row["consumer_worker_id"], dead_letter=row["dead_letter"],
    )


def _seconds(value: float | None) -> timedelta:
    return timedelta(seconds=value or 0)


# Not only future vts: a message that fell due a moment ago, after the claim that missed
# it, must count too (0), or "idle" would be declared with work still to do.
_NEXT_DUE = Statement(select(
    func.extract("epoch", func.min(_m.c.vt) - _NOW).label("due"),
    select(_q.c.paused).where(_queue_row).scalar_subquery().label("paused"),
).where(
    _m.c.queue_id == _QUEUE,
    _m.c.read_ct < select(_q.c.max_read_ct).where(_queue_row).scalar_subquery(),
))


class MessageRepository(Repository):
    """Live messages: enqueue, claim, ack (archive/delete), extend, release, counts."""

    async def enqueue(self, executor: Executor, *, queue_id: int, payload: str,
                      delay: float | None, worker_id: int | None) -> int:
        """Insert one pre-encoded JSON payload; return its id."""
        rows = await self._rows(executor, _ENQUEUE, {
            "p_queue_id": queue_id, "p_payload": payload, "p_delay": _seconds(delay),
            "p_worker_id": worker_id, "p_channel": self.channel,
        })
        return int(rows[0]["id"])

    async def enqueue_batch(self, executor: Executor, *, queue_id: int,
                            payloads: Sequence[str], delay: float | None,
                            worker_id: int | None) -> builtins.list[int]:
        """Insert many pre-encoded payloads in one statement; ids in input order."""
        rows = await self._rows(executor, _ENQUEUE_BATCH, {
            "p_queue_id": queue_id, "p_payloads": list(payloads), "p_delay": _seconds(delay),
            "p_worker_id": worker_id, "p_channel": self.channel,
        })
        # Ids come from one sequence in ordinality order, so sorting restores input order.
        return sorted(int(r["id"]) for r in rows)

    async def dequeue(self, executor: Executor, *, queue_id: int, worker_id: int, limit: int,
                      lease: float | None = None) -> builtins.list[QueueMessage]:
        """Claim up to ``limit`` visible messages for ``worker_id``, oldest first.

        The queue's row decides, in the same statement: nothing while it is paused, no
        message delivered ``max_read_ct`` times, and the lease when ``lease`` is None
        (each message's lease is then ``vt - dequeued_at``).
        """
        rows = await self._rows(executor, _DEQUEUE, {
            "p_queue_id": queue_id, "p_worker_id": worker_id, "p_limit": limit,
            "p_lease": None if lease is None else timedelta(seconds=lease),
        })
        return sorted((to_message(r) for r in rows), key=lambda m: m.id)

    async def seconds_until_due(self, executor: Executor, *, queue_id: int) -> float | None:
        """Seconds until the next message (delayed, leased or visible: 0) is claimable.

        None when the queue holds nothing that could still be delivered (under its
        current ``max_read_ct``); ``math.inf`` while the queue is paused with messages in
        it: nothing falls due by itself, and resuming the queue wakes its consumers
        (NOTIFY), so a waiting consumer just keeps waiting.
        """
        rows = await self._rows(executor, _NEXT_DUE, {"p_queue_id": queue_id})
        value = rows[0]["due"] if rows else None
        if value is None:
            return None
        return math.inf if rows[0]["paused"] else max(float(value), 0.0)

    async def archive(self, executor: Executor, *, worker_id: int | None,
                      ids: Sequence[int], dead: bool = False) -> set[int]:
        """Move messages to the archive (``dead`` marks dead letters); return the moved ids.

        With a ``worker_id`` only the messages that worker holds move (the lease fence);
        ``None`` is the operator's override and moves them whoever holds them.
        """
        if worker_id is None:
            statement = _ARCHIVE_ANY
        else:
            statement = _ARCHIVE_DEAD if dead else _ARCHIVE
        rows = await self._rows(executor, statement, {"p_ids": list(ids),
                                                      "p_worker_id": worker_id})
        return {int(r["original_msg_id"]) for r in rows}

    async def delete(self, executor: Executor, *, worker_id: int | None,
                     ids: Sequence[int]) -> set[int]:
        """Delete messages (only those ``worker_id`` holds, unless it is None)."""
        statement = _DELETE if worker_id is not None else _DELETE_ANY
        rows = await self._rows(executor, statement, {"p_ids": list(ids),
                                                      "p_worker_id": worker_id})
        return {int(r["id"]) for r in rows}

    async def extend(self, executor: Executor, *, worker_id: int, message_id: int,
                     seconds: float) -> bool:
        """Set the lease to end ``seconds`` from now, if this worker holds it."""
        rows = await self._rows(executor, _EXTEND, {
            "p_id": message_id, "p_worker_id": worker_id, "p_lease": _seconds(seconds),
        })
        return bool(rows)

    async def release(self, executor: Executor, *, worker_id: int, ids: Sequence[int],
                      delay: float | None) -> int:
        """Give held messages back, visible again after ``delay``; return how many."""
        rows = await self._rows(executor, _RELEASE, {
            "p_ids": list(ids), "p_worker_id": worker_id, "p_delay": _seconds(delay),
            "p_channel": self.channel,
        })
        return len(rows)

    async def release_worker(self, executor: Executor, worker_id: int) -> int:
        """Release everything ``worker_id`` holds, visible at once; return how many."""
        rows = await self._rows(executor, _RELEASE_WORKER, {
            "p_worker_id": worker_id, "p_channel": self.channel,
        })
        return len(rows)

    async def move_dead_letters(self, executor: Executor, *,
                                queue_id: int | None) -> builtins.list[int]:
        """Archive exhausted messages whose lease is over, marked dead; return their ids.

        Each message is measured against its own queue's ``max_read_ct``, whoever asks.
        """
        if queue_id is None:
            result = await self._execute(executor, _DLQ_ALL)
        else:
            result = await self._execute(executor, _DLQ_QUEUE, {"p_queue_id": queue_id})
        return sorted(int(i) for i in result.scalars())

    async def get(self, executor: Executor, message_id: int) -> QueueMessage | None:
        """The live message with this id, or None."""
        row = (await self._execute(
            executor, select(*_m.c).where(_m.c.id == message_id)
        )).first()
        return to_message(row._mapping) if row is not None else None

    def _filtered(self, queue_id: int | None, worker_id: int | None) -> builtins.list[Any]:
        where: builtins.list[Any] = []
        if queue_id is not None:
            where.append(_m.c.queue_id == queue_id)
        if worker_id is not None:
            where.append(_m.c.consumer_worker_id == worker_id)
        return where

    async def list(self, executor: Executor, *, queue_id: int | None = None,
                   worker_id: int | None = None, limit: int | None = None,
                   offset: int = 0) -> builtins.list[QueueMessage]:
        """Live messages, oldest first, optionally by queue and/or holding worker."""
        stmt = (select(*_m.c).where(*self._filtered(queue_id, worker_id))
                .order_by(_m.c.id).limit(limit).offset(offset))
        return [to_message(r) for r in (await self._execute(executor, stmt)).mappings()]

    async def count(self, executor: Executor, *, queue_id: int | None = None,
                    worker_id: int | None = None) -> int:
        """Number of live messages, optionally by queue and/or holding worker."""
        stmt = select(func.count()).select_from(_m).where(*self._filtered(queue_id, worker_id))
        return int((await self._execute(executor, stmt)).scalar_one())

    async def metrics(self, executor: Executor, *,
                      queue_id: int | None) -> dict[int, dict[str, Any]]:
        """Per-queue counts in one snapshot: total, pending, leased, delayed, dead.

        "Dead" uses each queue's own ``max_read_ct`` (joined from its row).
        """
        exhausted = _m.c.read_ct >= _q.c.max_read_ct
        visible = _m.c.vt <= _NOW

        def count_if(cond: Any) -> Any:
            return func.count(case((cond, 1)))

        stmt = select(
            _m.c.queue_id,
            func.count().label("total"),
            count_if(and_(visible, ~exhausted)).label("pending"),
            count_if(and_(~visible, _m.c.consumer_worker_id.is_not(None))).label("leased"),
            count_if(and_(~visible, _m.c.consumer_worker_id.is_(None))).label("delayed"),
            count_if(and_(visible, exhausted)).label("dead"),
            func.min(case((and_(visible, ~exhausted), _m.c.vt))).label("oldest_pending"),
            func.max(_m.c.enqueued_at).label("newest"),
            _NOW.label("now"),
        ).select_from(_m.join(_q, _q.c.id == _m.c.queue_id)).group_by(_m.c.queue_id)
        if queue_id is not None:
            stmt = stmt.where(_m.c.queue_id == queue_id)
        return {r.queue_id: r._asdict() for r in await self._execute(executor, stmt)}
