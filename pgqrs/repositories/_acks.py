"""Acknowledgements: the per-delivery fence, the archive move, and the fused ack-and-claim.

An ack (archive or delete) only takes a delivery its worker still holds: the row's
``consumer_worker_id`` is the worker AND its ``read_ct`` is the one the delivery was
claimed at (a redelivery increments it). ``p_read_cts`` runs parallel to ``p_ids``.

The fused statements (``ARCHIVE_AND_DEQUEUE``, ``DELETE_AND_DEQUEUE``) acknowledge the
deliveries a consumer finished and claim its next batch in one statement: one round trip
and one commit (one WAL flush) instead of two. Their CTEs share one snapshot and
PostgreSQL runs every data-modifying CTE to completion whatever the outer query reads:

- ``moved``: the fenced ``DELETE ... RETURNING`` of the acknowledged ungrouped rows (and,
  to archive, ``archived``: the ``INSERT`` of them into ``pgqrs_archive``);
- ``claimed``: the claim of ``_claim.claiming``, kept off every id being acknowledged
  (``id <> ALL(p_ids)``): one statement must not delete and update the same row (which of
  the two happened would be unpredictable), and a message acknowledged now must not be
  handed out again by the same call, even if its lease had run out;
- the outer query: a one-row aggregate of the acknowledged ids (``acked``) LEFT JOINed to
  the claimed rows, so the result always has a row (``id`` NULL when nothing was claimed)
  and says which acks the fence let through.

Grouped messages are not taken here (``group_key IS NULL`` in the fence): their removal
hands the group over to its next message (``_groups.leaving``), and that successor would
not be visible to this statement's claim anyway (same snapshot). Callers send them the
existing way first, then run the fused statement.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Integer,
    all_,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    true,
)
from sqlalchemy.sql.elements import Grouping

from pgqrs.models import archive_table, messages_table
from pgqrs.repositories import _claim, _groups
from pgqrs.repositories._base import Statement

_m = messages_table
_a = archive_table

IDS = bindparam("p_ids", type_=ARRAY(BigInteger))
WORKER = bindparam("p_worker_id", type_=BigInteger)
READ_CTS = bindparam("p_read_cts", type_=ARRAY(Integer))
HELD = and_(_m.c.id == any_(IDS), _m.c.consumer_worker_id == WORKER,
            _m.c.read_ct == Grouping(READ_CTS)[func.array_position(IDS, _m.c.id)])
"""The fence: the worker holds the message AND it is the delivery the caller names."""
UNGROUPED = and_(HELD, _m.c.group_key.is_(None))
"""Ungrouped messages leave in one statement; a grouped one must hand over to the next of
its group (see ``_groups``), so the lean statements leave grouped rows alone."""


def _archived(moved: Any, *, dead: bool) -> Any:
    """``INSERT INTO pgqrs_archive`` the rows of the ``moved`` CTE (a ``DELETE ... *``)."""
    rows = select(
        moved.c.id, moved.c.queue_id, moved.c.payload, moved.c.enqueued_at, moved.c.vt,
        moved.c.read_ct, moved.c.dequeued_at, moved.c.producer_worker_id,
        moved.c.consumer_worker_id, moved.c.priority, moved.c.dedup_key, moved.c.group_key,
        moved.c.headers, literal_column("true" if dead else "false"),
    )
    return (insert(_a).from_select(list(_groups.ARCHIVE_COLUMNS), rows)
            .returning(_a.c.original_msg_id))


def archive_statement(where: ColumnElement[bool], *, dead: bool) -> Any:
    """One statement that moves the matching (ungrouped) live rows into the archive."""
    return _archived(delete(_m).where(where).returning(*_m.c).cte("moved"), dead=dead)


def _acked_and_claimed(*, archive: bool) -> Any:
    """The fused statement: ack ``p_ids`` (fenced, ungrouped), claim up to ``p_limit``."""
    if archive:
        moved = delete(_m).where(UNGROUPED).returning(*_m.c).cte("moved")
        done = _archived(moved, dead=False).cte("archived")
        acked_ids = done.c.original_msg_id
    else:
        done = delete(_m).where(UNGROUPED).returning(_m.c.id).cte("moved")
        acked_ids = done.c.id
    acked = select(func.array_agg(acked_ids).label("acked")).subquery("acked")
    claimed = _claim.claiming(_m.c.id != all_(IDS)).cte("claimed")
    return (select(acked.c.acked, *claimed.c)
            .select_from(acked.outerjoin(claimed, true())))


ARCHIVE_AND_DEQUEUE = Statement(_acked_and_claimed(archive=True))
DELETE_AND_DEQUEUE = Statement(_acked_and_claimed(archive=False))
