"""The claim: which messages a consumer gets next, and when the next one is due.

Both read the claim index ``(queue_id, priority DESC, vt, id) WHERE NOT parked`` one
priority level at a time (see ``DEQUEUE``), so neither ever walks rows that cannot be
claimed now: delayed and leased rows sort after the claimable ones of their level, and
parked rows (waiting behind their group's head) are not in the index at all.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Interval,
    and_,
    any_,
    bindparam,
    func,
    select,
    true,
    update,
)

from pgqrs.models import messages_table, queues_table, workers_table
from pgqrs.repositories._base import Statement
from pgqrs.types import WorkerStatus

_m = messages_table
_w = workers_table
_q = queues_table
_NOW = func.now()
_WORKER = bindparam("p_worker_id", type_=BigInteger)
_QUEUE = bindparam("p_queue_id", type_=BigInteger)

# The claim, per priority level from the highest: the oldest visible messages of a level,
# then the next level. ``levels`` walks the distinct priorities of the queue's claimable
# (unparked) rows, one index probe each, lazily: a claim served by the top level never
# looks further. Within a level the index is ordered by vt, so every visible row comes
# before every delayed or leased one (vt in the future): LIMIT stops before reaching them,
# and a level with nothing visible costs one probe. (One ORDER BY priority DESC, vt over
# the whole index would walk the invisible rows of every level above the first visible
# one; PostgreSQL 18's skip scan avoids that too, but 10-17 would walk.)
# Paused queue and the worker's status are one-time checks on the anchor: nothing is
# scanned while the queue is paused or the worker is not ready. The threshold comes from
# the queue row in this very statement, so a policy change reaches running consumers on
# their next claim.
_queue_row = _q.c.id == _QUEUE
_open = and_(_m.c.queue_id == _QUEUE, ~_m.c.parked)


def _levels(name: str, *checks: ColumnElement[bool]) -> Any:
    top = (select(_m.c.priority.label("p")).where(_open, *checks)
           .order_by(_m.c.priority.desc()).limit(1).cte(name, recursive=True))
    below = (select(_m.c.priority).where(_open, _m.c.priority < top.c.p)
             .order_by(_m.c.priority.desc()).limit(1).scalar_subquery())
    return top.union_all(select(below).where(top.c.p.is_not(None)))


_MAX_READ_CT = select(_q.c.max_read_ct).where(_queue_row).scalar_subquery()
_claim_levels = _levels(
    "levels",
    select(_q.c.id).where(_queue_row, _q.c.paused.is_(False)).exists(),
    select(_w.c.id).where(_w.c.id == _WORKER, _w.c.status == WorkerStatus.READY).exists(),
)
_LIMIT = bindparam("p_limit", type_=Integer)


def claiming(*excluded: ColumnElement[bool]) -> Any:
    """The claim's ``UPDATE ... RETURNING``, its candidates also filtered by ``excluded``.

    ``excluded`` lets a statement that removes rows in another of its CTEs keep the claim
    off them: one statement must not both delete and update a row (see ``_acks``).
    """
    picked = (
        select(_m.c.id)
        .where(_open, _m.c.priority == _claim_levels.c.p, _m.c.vt <= _NOW,
               _m.c.read_ct < _MAX_READ_CT, *excluded)
        .order_by(_m.c.vt, _m.c.id)
        .limit(_LIMIT)
        .with_for_update(skip_locked=True)
        .lateral("picked")
    )
    claimable = (select(picked.c.id).select_from(_claim_levels.join(picked, true()))
                 .limit(_LIMIT).cte("claim"))
    # A NULL p_lease means "the queue's visibility_timeout" (another one-time lookup). The
    # policy is not returned with the rows: that cost ~10% per claim, and the consume loop
    # needs it only when a handler fails (QueueRepository.policy, or
    # retry_or_dead_letter()). The claimed rows are updated through the primary key
    # (id = ANY(array)), never through a join the planner might turn into a scan of the
    # table; with nothing claimed (a paused queue) a one-time filter skips even that.
    return (
        update(_m)
        .where(_m.c.id == any_(func.array(select(claimable.c.id).scalar_subquery())),
               select(claimable.c.id).exists())
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


DEQUEUE = Statement(claiming())

# Per priority level, the first claimable row in vt order (one probe each, walking only
# exhausted rows): the earliest of them is when the next claim can succeed. Not only
# future vts: a message that fell due a moment ago, after the claim that missed it, must
# count too (0), or "idle" would be declared with work still to do. Parked messages wait
# for their group's head, which is counted.
_due_levels = _levels("levels")
_first = (
    select(_m.c.vt)
    .where(_open, _m.c.priority == _due_levels.c.p, _m.c.read_ct < _MAX_READ_CT)
    .order_by(_m.c.vt, _m.c.id)
    .limit(1)
    .lateral("first")
)
NEXT_DUE = Statement(select(
    func.extract("epoch", func.min(_first.c.vt) - _NOW).label("due"),
    select(_q.c.paused).where(_queue_row).scalar_subquery().label("paused"),
).select_from(_due_levels.join(_first, true())))


