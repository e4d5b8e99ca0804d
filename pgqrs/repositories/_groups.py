"""Ordered groups: the statement shapes that put messages in and take them out.

Of a group's live messages exactly one is claimable, its *head* (the oldest); the others
are ``parked`` and kept out of the claim index. ``pgqrs_groups`` holds one row per group
with live messages: its lock and its count of live messages (``live``).

Entering (``entering``): one statement upserts the group rows of the new messages, which
locks them and returns the latest committed count even outside the statement's snapshot
(``ON CONFLICT DO UPDATE`` works on the newest row version), and inserts each message
parked unless its group was empty and it is the group's first in the statement. Message
ids are drawn after the group row is locked, so a group's id order is its order.

Leaving (``leaving``): a removed head must hand over to the next parked message, and that
one may have been enqueued while the remover waited for the group lock: a statement's
snapshot is taken *before* it waits, so it would not see it. Hence two statements in one
transaction: ``lock_groups`` (``SELECT ... FOR UPDATE``, in key order so removers never
deadlock), then, with a snapshot taken once the locks are held, ``leaving``: delete (or
archive) the rows, count them out of their groups (a group's row goes with its last
message) and unpark the lowest parked id of every group that lost its head. Released or
expired heads stay heads: only leaving the live table hands over.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
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
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.selectable import CTE

from pgqrs.models import archive_table, groups_table, messages_table

_m = messages_table
_a = archive_table
_g = groups_table

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


_LOCK_QUEUES = bindparam("p_lock_queues", type_=ARRAY(BigInteger))
_LOCK_GROUPS = bindparam("p_lock_groups", type_=ARRAY(Text))


def lock_groups(members: Any) -> Any:
    """``SELECT queue_id, group_key FROM pgqrs_groups ... FOR UPDATE`` in key order.

    ``members`` selects ``(queue_id, group_key)`` of the messages about to leave.
    """
    return (
        select(_g.c.queue_id, _g.c.group_key)
        .where(tuple_(_g.c.queue_id, _g.c.group_key).in_(members))
        .order_by(_g.c.queue_id, _g.c.group_key)
        .with_for_update()
    )


def in_locked_groups() -> ColumnElement[bool]:
    """The message is ungrouped or in a group passed as ``p_lock_queues/p_lock_groups``."""
    locked = select(func.unnest(_LOCK_QUEUES), func.unnest(_LOCK_GROUPS))
    return or_(_m.c.group_key.is_(None),
               tuple_(_m.c.queue_id, _m.c.group_key).in_(locked))


def leaving(where: ColumnElement[bool], *, archive: bool, dead: bool = False) -> Any:
    """Remove the live rows matching ``where`` (archived, or deleted), groups kept right.

    Run it after ``lock_groups`` locked the groups of the rows, in the same transaction.
    Returns ``SELECT id`` of the removed rows (the original ids), NOTIFYing the queues of
    the messages it unparked (rows with a NULL id).
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
    successor = (
        select(func.min(_m.c.id))
        .where(_m.c.queue_id == gone.c.queue_id, _m.c.group_key == gone.c.group_key,
               _m.c.parked, _m.c.id.not_in(select(moved.c.id)))
        .scalar_subquery()
    )
    unparked = (
        update(_m)
        .where(_m.c.id.in_(select(successor).where(gone.c.head)))
        .values(parked=False)
        .returning(_m.c.queue_id)
        .cte("unparked")
    )
    same_group = and_(_g.c.queue_id == gone.c.queue_id, _g.c.group_key == gone.c.group_key)
    counted = (update(_g).where(same_group, _g.c.live > gone.c.n)
               .values(live=_g.c.live - gone.c.n).returning(_g.c.queue_id).cte("counted"))
    emptied = (delete(_g).where(same_group, _g.c.live <= gone.c.n)
               .returning(_g.c.queue_id).cte("emptied"))
    return (
        select(done.c.id, null().label("notified"))
        .union_all(select(null(), func.pg_notify(CHANNEL, cast(unparked.c.queue_id, Text))))
        .add_cte(counted, emptied)
    )


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
