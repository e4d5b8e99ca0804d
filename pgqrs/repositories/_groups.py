"""Ordered groups: the statement shapes that put messages in and take them out.

Of a group's live messages at most one is claimable, its *head* (the oldest); the others
are ``parked`` and kept out of the claim index. ``pgqrs_groups`` holds one row per group:
its lock, its count of live messages (``live``) and a ``needs_head`` flag.

Entering (``entering``): one statement upserts the group rows of the new messages, which
locks them and returns the newest committed count even when the row changed after the
statement's snapshot (``ON CONFLICT DO UPDATE`` works on the newest row version), and
inserts each message parked unless its group was empty and it is the group's first in the
statement. Message ids are drawn after the group row is locked, so a group's id order is
its order.

Leaving (``leaving``): one statement removes the rows (deleted or archived), counts them
out of their groups and unparks the lowest parked id of each group that lost its head. That
id is read in the statement's snapshot, which is taken *before* the statement waits for a
group row another transaction holds: an enqueue into the group that committed meanwhile
(its message parked behind the head being removed) is not in it. The count is right all
the same (the ``UPDATE`` of the group row sees the newest version), so the statement knows
that messages are left and none was unparked: it sets ``needs_head`` and says so. The
remover then runs ``heal`` (a new statement: its snapshot has the message), which unparks
the lowest parked id of flagged groups. Should the remover die in between, the group waits
for the next heal: every consumer of the queue runs one with its heartbeat and whenever
it finds nothing to claim, and ``Admin.dlq()`` heals every queue. Released or expired heads
stay heads: only
leaving the live table hands a group over. Unparking only ever takes a group's lowest
parked id, and a group with a head never gets ``needs_head``, so no group has two heads.

A group row left at ``live = 0`` stays until a later removal in its queue deletes it
(``leaving`` sweeps a few each time): an ``UPDATE`` and a ``DELETE`` of one row cannot share
a statement, and the count must be an ``UPDATE`` to see the newest version.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    false,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.selectable import CTE

from pgqrs.models import archive_table, groups_table, messages_table, queues_table

_m = messages_table
_a = archive_table
_g = groups_table
_q = queues_table

CHANNEL = bindparam("p_channel", type_=Text)
"""The NOTIFY channel parameter every waking statement takes."""

ENTRY_COLUMNS = ("queue_id", "payload", "vt", "producer_worker_id", "priority", "headers",
                 "group_key", "dedup_key")
"""Columns of the rows ``entering`` inserts, in this order (plus ``ord``, their order)."""

ARCHIVE_COLUMNS = (
    "original_msg_id", "queue_id", "payload", "enqueued_at", "vt", "read_ct", "dequeued_at",
    "producer_worker_id", "consumer_worker_id", "priority", "dedup_key", "group_key",
    "headers", "dead_letter",
)


def locked_queue(queue_id: Any) -> Any:
    """``queue_id`` if that queue exists, its row locked ``FOR KEY SHARE``; else NULL.

    Every statement that inserts messages takes ``queue_id`` from here: what the foreign
    key to ``pgqrs_queues`` did per row (pgqrs_0005 dropped it), once per statement when
    ``queue_id`` is a parameter. ``Admin.delete_queue`` locks the row ``FOR UPDATE`` before
    it counts the queue's messages, so an enqueue either commits first (and is counted:
    the queue is in use) or waits and then finds no queue: NULL violates ``NOT NULL`` and
    the statement fails, inserting nothing. Never an orphan message.
    """
    return (select(_q.c.id).where(_q.c.id == queue_id)
            .with_for_update(read=True, key_share=True).scalar_subquery())


def entering(rows: CTE, *, skip_duplicates: bool = False) -> Any:
    """``INSERT`` the messages of ``rows`` (``ENTRY_COLUMNS`` + ``ord``), joining groups.

    Returns the insert, ``RETURNING id, queue_id, dedup_key, parked``. With
    ``skip_duplicates`` a row whose dedup key is live already is skipped (``ON CONFLICT DO
    NOTHING``); such rows must carry no group (their count would be off).
    """
    ranked = select(
        *rows.c,
        func.row_number().over(partition_by=[rows.c.queue_id, rows.c.group_key],
                               order_by=rows.c.ord).label("rank"),
    ).cte("ranked")
    counts = (
        select(ranked.c.queue_id, ranked.c.group_key, func.count().label("n"))
        .where(ranked.c.group_key.is_not(None))
        .group_by(ranked.c.queue_id, ranked.c.group_key)
        .cte("counts")
    )
    joining = pg_insert(_g).from_select(
        ["queue_id", "group_key", "live"],
        # Key order: two statements locking several groups never wait for each other.
        select(counts.c.queue_id, counts.c.group_key, counts.c.n)
        .order_by(counts.c.queue_id, counts.c.group_key),
    )
    entered = joining.on_conflict_do_update(
        index_elements=["queue_id", "group_key"],
        set_={"live": _g.c.live + joining.excluded.live},
    ).returning(_g.c.queue_id, _g.c.group_key, _g.c.live).cte("entered")
    # live after the upsert = live before + n: the first of the statement's rows heads the
    # group only if the group had no live message before.
    parked = and_(ranked.c.group_key.is_not(None),
                  or_(ranked.c.rank > 1, entered.c.live > counts.c.n))
    source = (
        select(*(ranked.c[c] for c in ENTRY_COLUMNS), func.coalesce(parked, false()))
        .select_from(
            ranked
            .outerjoin(counts, and_(counts.c.queue_id == ranked.c.queue_id,
                                    counts.c.group_key == ranked.c.group_key))
            .outerjoin(entered, and_(entered.c.queue_id == ranked.c.queue_id,
                                     entered.c.group_key == ranked.c.group_key))
        )
        .order_by(ranked.c.ord)
    )
    statement = pg_insert(_m).from_select([*ENTRY_COLUMNS, "parked"], source)
    if skip_duplicates:
        statement = statement.on_conflict_do_nothing(
            index_elements=["queue_id", "dedup_key"],
            index_where=_m.c.dedup_key.is_not(None),
        )
    return statement.returning(_m.c.id, _m.c.queue_id, _m.c.dedup_key, _m.c.parked)


def notified(changed: CTE) -> Any:
    """``SELECT id, dedup_key`` of ``changed``, NOTIFYing its queues where claimable."""
    return select(
        changed.c.id, changed.c.dedup_key,
        func.pg_notify(CHANNEL, cast(changed.c.queue_id, Text)).label("notified"),
    )


_SWEEP = 8
"""Empty group rows a removal deletes along the way; flagged groups a claim heals."""


def leaving(where: ColumnElement[bool], *, archive: bool, dead: bool = False) -> Any:
    """Remove the live rows matching ``where`` (archived, or deleted), groups kept right.

    Returns ``SELECT id, notified, flagged``: the removed rows (their original ids), then
    rows with a NULL id that NOTIFY the queues of the groups it unparked, and one with
    ``flagged`` per group it could not hand over (run ``heal`` next).
    """
    moved = delete(_m).where(where).returning(*_m.c).cte("moved")
    if archive:
        rows = select(
            moved.c.id, moved.c.queue_id, moved.c.payload, moved.c.enqueued_at, moved.c.vt,
            moved.c.read_ct, moved.c.dequeued_at, moved.c.producer_worker_id,
            moved.c.consumer_worker_id, moved.c.priority, moved.c.dedup_key,
            moved.c.group_key, moved.c.headers,
            literal_column("true" if dead else "false"),
        )
        done = (insert(_a).from_select(list(ARCHIVE_COLUMNS), rows)
                .returning(_a.c.original_msg_id.label("id")).cte("archived"))
    else:
        done = moved
    gone = (
        select(moved.c.queue_id, moved.c.group_key, func.count().label("n"),
               func.bool_or(~moved.c.parked).label("head"))
        .where(moved.c.group_key.is_not(None))
        .group_by(moved.c.queue_id, moved.c.group_key)
        .cte("gone")
    )
    same = and_(_g.c.queue_id == gone.c.queue_id, _g.c.group_key == gone.c.group_key)
    # The group rows, locked in key order: removals of several groups never deadlock.
    locked = (select(_g.c.queue_id, _g.c.group_key).where(same)
              .order_by(_g.c.queue_id, _g.c.group_key).with_for_update().cte("locked"))
    successor = (
        select(func.min(_m.c.id))
        .where(_m.c.queue_id == gone.c.queue_id, _m.c.group_key == gone.c.group_key,
               _m.c.parked, _m.c.id.not_in(select(moved.c.id)))
        .scalar_subquery()
    )
    unparked = (
        update(_m)
        .where(_m.c.id.in_(select(successor).where(gone.c.head)), _m.c.parked)
        .values(parked=False)
        .returning(_m.c.queue_id, _m.c.group_key)
        .cte("unparked")
    )
    left = _g.c.live - gone.c.n
    handed_over = select(unparked.c.group_key).where(
        unparked.c.queue_id == _g.c.queue_id, unparked.c.group_key == _g.c.group_key).exists()
    counted = (
        update(_g)
        .where(same, tuple_(_g.c.queue_id, _g.c.group_key).in_(select(*locked.c)))
        .values(live=left,
                needs_head=and_(left > 0, or_(and_(gone.c.head, ~handed_over),
                                              and_(~gone.c.head, _g.c.needs_head))))
        .returning(_g.c.queue_id, _g.c.needs_head)
        .cte("counted")
    )
    empty = (
        select(_g.c.queue_id, _g.c.group_key)
        # A literal 0, not a parameter: only then can a generic plan use the partial index
        # "WHERE live = 0".
        .where(_g.c.queue_id.in_(select(gone.c.queue_id)), _g.c.live == literal_column("0"),
               tuple_(_g.c.queue_id, _g.c.group_key).not_in(
                   select(gone.c.queue_id, gone.c.group_key)))
        .limit(_SWEEP)
        .with_for_update(skip_locked=True)
    )
    swept = (delete(_g).where(tuple_(_g.c.queue_id, _g.c.group_key).in_(empty))
             .returning(_g.c.queue_id).cte("swept"))
    return union_all(
        select(done.c.id, null().label("notified"), false().label("flagged")),
        select(null(), func.pg_notify(CHANNEL, cast(unparked.c.queue_id, Text)), false()),
        select(null(), null(), true()).where(counted.c.needs_head),
    ).add_cte(swept)


def heal(queue: Any) -> Any:
    """Unpark the next message of ``queue``'s flagged groups (all queues' if it is NULL).

    Skips group rows another transaction holds (a later heal takes them), so it never
    waits. Returns ``SELECT notified``, one NOTIFY per group handed over.
    """
    flagged = (select(_g.c.queue_id, _g.c.group_key)
               .where(or_(_g.c.queue_id == queue, queue.is_(None)), _g.c.needs_head)
               .order_by(_g.c.queue_id, _g.c.group_key).limit(_SWEEP)
               .with_for_update(skip_locked=True).cte("flagged"))
    head = (select(func.min(_m.c.id))
            .where(_m.c.queue_id == flagged.c.queue_id, _m.c.group_key == flagged.c.group_key,
                   _m.c.parked)
            .scalar_subquery())
    healed = (update(_m).where(_m.c.id.in_(select(head).select_from(flagged)), _m.c.parked)
              .values(parked=False)
              .returning(_m.c.queue_id, _m.c.group_key).cte("healed"))
    cleared = (update(_g)
               .where(_g.c.queue_id == healed.c.queue_id, _g.c.group_key == healed.c.group_key)
               .values(needs_head=False).returning(_g.c.queue_id).cte("cleared"))
    return (select(func.pg_notify(CHANNEL, cast(healed.c.queue_id, Text)).label("notified"))
            .add_cte(cleared))


_QUEUE = bindparam("p_queue_id", type_=BigInteger)
LOCK_QUEUE_GROUPS = (select(_g.c.group_key).where(_g.c.queue_id == _QUEUE)
                     .order_by(_g.c.group_key).with_for_update())
"""Purging a queue, first: lock its groups (enqueues into them wait for the purge)."""
DROP_EMPTY_GROUPS = delete(_g).where(
    _g.c.queue_id == _QUEUE,
    ~select(_m.c.id).where(_m.c.queue_id == _g.c.queue_id,
                           _m.c.group_key == _g.c.group_key).exists(),
)
"""Purging a queue, last: drop its groups without live messages (a group created while
the purge ran keeps its row if its message survived)."""
