"""Statements on ``pgqrs_messages``: acks fenced per delivery, releases, reads, counts.

Enqueues live in ``_enqueue``, the claim in ``_claim``, the ack fence and the fused
ack-and-claim in ``_acks``, and what ordered groups add to removals in ``_groups``;
``MessageRepository`` runs them all.

Every statement is built once at import; the schema map is applied per execution, so
SQLAlchemy's compiled cache serves them all after first use. The hot-path ones are
wrapped in ``Statement`` so they may also run on the driver directly (see ``_base``).
"""

from __future__ import annotations

import builtins
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    Interval,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    func,
    select,
    update,
)

from pgqrs.models import archive_table, messages_table, queues_table
from pgqrs.repositories import _acks, _claim, _enqueue, _groups, _states
from pgqrs.repositories._base import Executor, Statement
from pgqrs.types import ArchivedMessage, QueueMessage

_m = messages_table
_a = archive_table
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


# Enqueue statements live in _enqueue; the names here are the ones the fast-path tests and
# the benchmarks' floor look up.
_ENQUEUE = _enqueue.ENQUEUE
_ENQUEUE_BATCH = _enqueue.ENQUEUE_BATCH

# The claim and "when is the next message due" live in _claim; the names here are the
# ones the plan tests and the benchmarks' floor look up.
_DEQUEUE = _claim.DEQUEUE
_NEXT_DUE = _claim.NEXT_DUE


# The fence and the archive move live in _acks, with the fused ack-and-claim statements.
_READ_CTS = _acks.READ_CTS
_HELD = _acks.HELD
_UNGROUPED = _acks.UNGROUPED
_ARCHIVE_AND_DEQUEUE = _acks.ARCHIVE_AND_DEQUEUE
_DELETE_AND_DEQUEUE = _acks.DELETE_AND_DEQUEUE

_DELETE = Statement(delete(_m).where(_UNGROUPED).returning(_m.c.id))
_EXTEND = Statement(
    update(_m)
    .where(_m.c.id == bindparam("p_id"), _m.c.consumer_worker_id == _WORKER,
           _m.c.read_ct == bindparam("p_read_ct", type_=Integer))
    .values(vt=_NOW + bindparam("p_lease", type_=Interval))
    .returning(_m.c.id)
)
# A released group head stays the head: it is delivered again before the rest.
_RELEASE = Statement(notifying(
    update(_m)
    .where(_HELD)
    .values(vt=_NOW + _DELAY, consumer_worker_id=None)
    .returning(_m.c.id, _m.c.queue_id)
))
_RELEASE_WORKER = Statement(notifying(
    update(_m)
    .where(_m.c.consumer_worker_id == _WORKER)
    .values(vt=_NOW, consumer_worker_id=None)
    .returning(_m.c.id, _m.c.queue_id)
))


_ARCHIVE = Statement(_acks.archive_statement(_UNGROUPED, dead=False))
_ARCHIVE_DEAD = Statement(_acks.archive_statement(_UNGROUPED, dead=True))

# Removals that may touch grouped rows, which hand their groups over (see _groups).
_HEAL = Statement(_groups.heal(bindparam("p_heal_queue", type_=BigInteger)))
_LEAVE = {
    ("archive", True): Statement(_groups.leaving(_HELD, archive=True)),
    ("dead", True): Statement(_groups.leaving(_HELD, archive=True, dead=True)),
    ("delete", True): Statement(_groups.leaving(_HELD, archive=False)),
    ("archive", False): Statement(_groups.leaving(_m.c.id == any_(_IDS), archive=True)),
    ("delete", False): Statement(_groups.leaving(_m.c.id == any_(_IDS), archive=False)),
}
# Dead: as many deliveries as the message's own queue allows, and the lease over. The
# queue table in the WHERE clause makes this DELETE ... USING pgqrs_queues: one join, each
# message measured against its queue's threshold.
_DEAD_ANY_QUEUE = and_(_m.c.queue_id == _q.c.id, _m.c.read_ct >= _q.c.max_read_ct,
                       _m.c.vt <= _NOW)
_DLQ_ALL = _groups.leaving(_DEAD_ANY_QUEUE, archive=True, dead=True)
_DLQ_QUEUE = _groups.leaving(and_(_DEAD_ANY_QUEUE, _m.c.queue_id == _QUEUE), archive=True,
                             dead=True)


def _payload(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _headers(value: Any) -> dict[str, str]:
    return {} if value is None else dict(_payload(value))


def _setter(field: str) -> Callable[[QueueMessage, Any], None]:
    """The slot's own setter: what ``object.__setattr__`` finds by name, taken once."""
    setter: Callable[[QueueMessage, Any], None] = vars(QueueMessage)[field].__set__
    return setter


_new = object.__new__
_ID, _QUEUE_ID, _PAYLOAD, _VT, _ENQUEUED_AT, _READ_CT, _DEQUEUED_AT = map(_setter, (
    "id", "queue_id", "payload", "vt", "enqueued_at", "read_ct", "dequeued_at"))
_PRODUCER, _CONSUMER, _PRIORITY, _HEADERS, _DEDUP_KEY, _GROUP = map(_setter, (
    "producer_worker_id", "consumer_worker_id", "priority", "headers", "dedup_key", "group"))


def to_message(row: Mapping[Any, Any]) -> QueueMessage:
    """Build a ``QueueMessage`` from a ``pgqrs_messages`` row mapping.

    Once per claimed message, so it fills the slots itself: the frozen dataclass's
    ``__init__`` sets the same slots through ``object.__setattr__``, after binding
    thirteen keyword arguments, which costs about half as much again. The result is the
    instance the constructor builds (``tests/unit/test_rows.py`` checks it field by field,
    and that every field is set).
    """
    message: QueueMessage = _new(QueueMessage)
    _ID(message, row["id"])
    _QUEUE_ID(message, row["queue_id"])
    payload = row["payload"]
    _PAYLOAD(message, json.loads(payload) if isinstance(payload, str) else payload)
    _VT(message, row["vt"])
    _ENQUEUED_AT(message, row["enqueued_at"])
    _READ_CT(message, row["read_ct"])
    _DEQUEUED_AT(message, row["dequeued_at"])
    _PRODUCER(message, row["producer_worker_id"])
    _CONSUMER(message, row["consumer_worker_id"])
    _PRIORITY(message, row["priority"])
    headers = row["headers"]
    _HEADERS(message, {} if headers is None else dict(_payload(headers)))
    _DEDUP_KEY(message, row["dedup_key"])
    _GROUP(message, row["group_key"])
    return message


def to_archived(row: Mapping[Any, Any]) -> ArchivedMessage:
    """Build an ``ArchivedMessage`` from a ``pgqrs_archive`` row mapping."""
    return ArchivedMessage(
        id=row["id"], original_msg_id=row["original_msg_id"], queue_id=row["queue_id"],
        payload=_payload(row["payload"]), enqueued_at=row["enqueued_at"], vt=row["vt"],
        read_ct=row["read_ct"], archived_at=row["archived_at"],
        dequeued_at=row["dequeued_at"], producer_worker_id=row["producer_worker_id"],
        consumer_worker_id=row["consumer_worker_id"], dead_letter=row["dead_letter"],
        priority=row["priority"], headers=_headers(row["headers"]),
        dedup_key=row["dedup_key"], group=row["group_key"],
    )


def _seconds(value: float | None) -> timedelta:
    return timedelta(seconds=value or 0)


class MessageRepository(_enqueue.Enqueuing):
    """Live messages: enqueue, claim, ack (archive/delete), extend, release, counts."""

    async def dequeue(self, executor: Executor, *, queue_id: int, worker_id: int, limit: int,
                      lease: float | None = None) -> builtins.list[QueueMessage]:
        """Claim up to ``limit`` visible messages for ``worker_id``, highest priority first.

        Within a priority the oldest visible first (``vt``), and of an ordered group only
        its head. The queue's row decides, in the same statement: nothing while it is
        paused, no message delivered ``max_read_ct`` times, and the lease when ``lease``
        is None (each message's lease is then ``vt - dequeued_at``).
        """
        rows = await self._rows(executor, _DEQUEUE, {
            "p_queue_id": queue_id, "p_worker_id": worker_id, "p_limit": limit,
            "p_lease": None if lease is None else timedelta(seconds=lease),
        })
        return sorted((to_message(r) for r in rows), key=lambda m: (-m.priority, m.id))

    async def ack_and_dequeue(
            self, executor: Executor, *, queue_id: int, worker_id: int, ids: Sequence[int],
            read_cts: Sequence[int], limit: int, lease: float | None = None,
            delete: bool = False) -> tuple[set[int], builtins.list[QueueMessage]]:
        """Archive (or ``delete``) held ungrouped deliveries and claim, in one statement.

        The acks are fenced as in ``archive`` (``read_cts`` parallel to ``ids``; grouped
        messages are left alone: send them through ``leave`` first); the claim is
        ``dequeue``'s and never returns one of ``ids``. Returns the acknowledged ids and
        the claimed messages.
        """
        rows = await self._rows(executor, _DELETE_AND_DEQUEUE if delete else
                                _ARCHIVE_AND_DEQUEUE, {
            "p_ids": list(ids), "p_read_cts": _cts(ids, read_cts),
            "p_queue_id": queue_id, "p_worker_id": worker_id, "p_limit": limit,
            "p_lease": None if lease is None else timedelta(seconds=lease),
        })
        acked = rows[0]["acked"] if rows else None
        claimed = sorted((to_message(r) for r in rows if r["id"] is not None),
                         key=lambda m: (-m.priority, m.id))
        return set(acked or ()), claimed

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
                      ids: Sequence[int], read_cts: Sequence[int] | None = None,
                      dead: bool = False) -> set[int]:
        """Move messages to the archive (``dead`` marks dead letters); return the moved ids.

        With a ``worker_id``, only the deliveries it holds (``read_cts``, parallel to
        ``ids``) of *ungrouped* messages move: the lease fence, on the leanest statement
        (grouped ones go through ``leave``). ``None`` is the operator's override: whoever
        holds them, grouped or not.
        """
        if worker_id is None:
            return await self.leave(executor, worker_id=None, ids=ids, action="archive")
        rows = await self._rows(executor, _ARCHIVE_DEAD if dead else _ARCHIVE, {
            "p_ids": list(ids), "p_worker_id": worker_id, "p_read_cts": _cts(ids, read_cts)})
        return {int(r["original_msg_id"]) for r in rows}

    async def delete(self, executor: Executor, *, worker_id: int | None,
                     ids: Sequence[int], read_cts: Sequence[int] | None = None) -> set[int]:
        """Delete messages: as ``archive``, without keeping them."""
        if worker_id is None:
            return await self.leave(executor, worker_id=None, ids=ids, action="delete")
        rows = await self._rows(executor, _DELETE, {
            "p_ids": list(ids), "p_worker_id": worker_id, "p_read_cts": _cts(ids, read_cts)})
        return {int(r["id"]) for r in rows}

    async def settle(self, executor: Executor, *, worker_id: int,
                     deliveries: Sequence[tuple[int, int, bool]], action: str) -> set[int]:
        """Archive (``"archive"``, ``"dead"``) or ``"delete"`` held deliveries.

        ``deliveries`` are ``(id, read_ct, grouped)``. Ungrouped ones go on the leanest
        statement, grouped ones through ``leave``: at most two statements, each atomic.
        Returns the ids settled.
        """
        done: set[int] = set()
        for grouped in (False, True):
            part = [(i, r) for i, r, g in deliveries if g is grouped]
            if not part:
                continue
            ids, read_cts = [i for i, _ in part], [r for _, r in part]
            if grouped:
                done |= await self.leave(executor, worker_id=worker_id, ids=ids,
                                         read_cts=read_cts, action=action)
            elif action == "delete":
                done |= await self.delete(executor, worker_id=worker_id, ids=ids,
                                          read_cts=read_cts)
            else:
                done |= await self.archive(executor, worker_id=worker_id, ids=ids,
                                           read_cts=read_cts, dead=action == "dead")
        return done

    async def leave(self, executor: Executor, *, worker_id: int | None, ids: Sequence[int],
                    action: str, read_cts: Sequence[int] | None = None) -> set[int]:
        """Archive (``"archive"``, ``"dead"``) or ``"delete"`` messages, grouped or not.

        One statement that also hands each group that loses its head over to its next
        message (see ``_groups``). With a ``worker_id`` only its deliveries ``read_cts``
        are taken (the fence).
        """
        params: dict[str, Any] = {"p_ids": list(ids), "p_channel": self.channel}
        if worker_id is not None:
            params.update(p_worker_id=worker_id, p_read_cts=_cts(ids, read_cts))
        rows = await self._rows(executor, _LEAVE[action, worker_id is not None], params)
        if any(r["flagged"] for r in rows):
            await self.heal(executor)
        return {int(r["id"]) for r in rows if r["id"] is not None}

    async def heal(self, executor: Executor, *, queue_id: int | None = None) -> int:
        """Hand over groups whose head left without a successor in sight (see ``_groups``).

        Of one queue, or of all; never waits for a lock. Returns how many were handed over.
        """
        rows = await self._rows(executor, _HEAL, {"p_heal_queue": queue_id,
                                                  "p_channel": self.channel})
        return len(rows)

    async def extend(self, executor: Executor, *, worker_id: int, message_id: int,
                     read_ct: int, seconds: float) -> bool:
        """Set the lease to end ``seconds`` from now, if this worker holds that delivery."""
        rows = await self._rows(executor, _EXTEND, {
            "p_id": message_id, "p_worker_id": worker_id, "p_read_ct": read_ct,
            "p_lease": _seconds(seconds),
        })
        return bool(rows)

    async def release(self, executor: Executor, *, worker_id: int, ids: Sequence[int],
                      read_cts: Sequence[int], delay: float | None) -> set[int]:
        """Give held deliveries back, visible again after ``delay``; return their ids."""
        rows = await self._rows(executor, _RELEASE, {
            "p_ids": list(ids), "p_worker_id": worker_id, "p_read_cts": list(read_cts),
            "p_delay": _seconds(delay), "p_channel": self.channel,
        })
        return {int(r["id"]) for r in rows}

    async def release_worker(self, executor: Executor, worker_id: int) -> int:
        """Release everything ``worker_id`` holds, visible at once; return how many."""
        rows = await self._rows(executor, _RELEASE_WORKER, {
            "p_worker_id": worker_id, "p_channel": self.channel,
        })
        return len(rows)

    async def move_dead_letters(self, executor: Executor, *,
                                queue_id: int | None) -> builtins.list[int]:
        """Archive exhausted messages whose lease is over, marked dead; return their ids.

        Each message is measured against its own queue's ``max_read_ct``, whoever asks. A
        dead group head hands its group over to the next message.
        """
        params: dict[str, Any] = {"p_channel": self.channel}
        if queue_id is not None:
            params["p_queue_id"] = queue_id
        result = await self._execute(executor, _DLQ_ALL if queue_id is None else _DLQ_QUEUE,
                                     params)
        moved = sorted(int(r[0]) for r in result if r[0] is not None)
        await self.heal(executor, queue_id=queue_id)  # and any group left waiting
        return moved

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

        The states are ``pgqrs.repositories._states``'s, shared with the Prometheus
        collector and the dashboard: "dead" uses each queue's own ``max_read_ct``
        (joined from its row); "delayed" includes messages parked behind their group's
        head.
        """
        stmt = select(
            _m.c.queue_id,
            func.count().label("total"),
            *_states.counts(_m, _q.c.max_read_ct),
            func.max(_m.c.enqueued_at).label("newest"),
            _NOW.label("now"),
        ).select_from(_m.join(_q, _q.c.id == _m.c.queue_id)).group_by(_m.c.queue_id)
        if queue_id is not None:
            stmt = stmt.where(_m.c.queue_id == queue_id)
        return {r.queue_id: r._asdict() for r in await self._execute(executor, stmt)}


def _cts(ids: Sequence[int], read_cts: Sequence[int] | None) -> builtins.list[int]:
    if read_cts is None or len(read_cts) != len(ids):
        raise ValueError("read_cts must name the delivery of every id")
    return list(read_cts)
