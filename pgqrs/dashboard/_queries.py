"""The dashboard's read queries: keyset pages, bounded counts, throughput, bulk replay.

Every list is a keyset page on an index (``(queue_id, id)`` or the primary key of the
messages and archive tables), fetched as ``limit + 1`` rows to know whether another page
follows, so no page costs more than its own rows, however large the tables grow. Counts
that could scan a whole table are bounded (``LIMIT cap`` inside the count). The
throughput chart reads only the last minutes of the archive through its ``archived_at``
index. ``tests/dashboard/test_queries.py`` checks the plans with EXPLAIN.

The statements are built on ``pgqrs.models`` and run through ``Repository._execute``, so
the schema map and the error translation are the same as everywhere else in pgqrs.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Interval,
    Select,
    Text,
    bindparam,
    cast,
    func,
    literal,
    select,
)

from pgqrs.models import archive_table, messages_table, queues_table, workers_table
from pgqrs.repositories import _states
from pgqrs.repositories._base import Executor, Repository, Statement
from pgqrs.repositories.archive import replay_statement

_m = messages_table
_a = archive_table
_q = queues_table
_w = workers_table
_NOW = func.now()

PREVIEW_CHARS = 160
"""How much of a payload's JSON text a list shows; the rest stays in the database."""

MESSAGE_STATES = _states.STATES
"""Live message states, as ``Admin.queue_metrics`` counts them (the same conditions)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One keyset page: its rows, and the cursors of its neighbours (None: no such page)."""

    rows: builtins.list[dict[str, Any]]
    newer: int | None
    older: int | None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: below ``before`` or above ``after`` (neither: the first page)."""

    before: int | None = None
    after: int | None = None


def _state(max_read_ct: ColumnElement[Any]) -> ColumnElement[str]:
    return _states.state(_m, max_read_ct)


def _state_filter(state: str, max_read_ct: ColumnElement[Any]) -> ColumnElement[bool]:
    return _states.conditions(_m, max_read_ct)[state]


def _preview(payload: Any) -> Any:
    text = cast(payload, Text)
    return func.substr(text, 1, PREVIEW_CHARS + 1).label("preview")


def _keyset(stmt: Select[Any], key: Any, cursor: Cursor, limit: int, *,
            newest_first: bool) -> tuple[Select[Any], bool]:
    """Order ``stmt`` for the page at ``cursor``; True if its rows come back reversed.

    "Newer" means higher ids. A page is always fetched walking away from its cursor, so
    the index is read from the cursor on and never skipped over (no OFFSET).
    """
    if cursor.before is not None:
        stmt, walk_down = stmt.where(key < cursor.before), True
    elif cursor.after is not None:
        stmt, walk_down = stmt.where(key > cursor.after), False
    else:
        walk_down = newest_first
    stmt = stmt.order_by(key.desc() if walk_down else key.asc()).limit(limit + 1)
    return stmt, walk_down != newest_first


def _page(rows: Sequence[Any], cursor: Cursor, limit: int, *, reversed_: bool,
          newest_first: bool) -> Page:
    found = [dict(r._mapping) for r in rows]
    more = len(found) > limit  # one row over the page: the walk would go on
    found = found[:limit]
    if reversed_:
        found.reverse()
    if not found:
        return Page([], None, None)
    ids = [row["id"] for row in found]
    walked_down = cursor.before is not None or (cursor.after is None and newest_first)
    started = cursor.before is not None or cursor.after is not None
    # Ahead of the walk there is more if we over-fetched; behind it, if it began at a cursor.
    older = more if walked_down else started
    newer = started if walked_down else more
    return Page(found, newer=max(ids) if newer else None, older=min(ids) if older else None)


_MAX_READ_CT = bindparam("p_max_read_ct", type_=Integer)

_MESSAGE_COLUMNS = (
    _m.c.id, _m.c.queue_id, _m.c.vt, _m.c.enqueued_at, _m.c.read_ct, _m.c.dequeued_at,
    _m.c.producer_worker_id, _m.c.consumer_worker_id,
)
_DEAD_COLUMNS = (
    _a.c.id, _a.c.original_msg_id, _a.c.queue_id, _q.c.queue_name, _a.c.enqueued_at,
    _a.c.archived_at, _a.c.dequeued_at, _a.c.read_ct, _a.c.consumer_worker_id,
    _a.c.producer_worker_id,
)

# Replay of many dead letters in one statement per batch: the very statement shape of
# ArchiveRepository.replay (archive.replay_statement), for the ids of one batch;
# tests/dashboard/test_http.py checks that both make the same message, column for column.
_BATCH = bindparam("p_batch", type_=Integer)
_replay_ids = (
    select(_a.c.id)
    .where(_a.c.dead_letter.is_(True), _a.c.queue_id == bindparam("p_queue_id",
                                                                     type_=BigInteger))
    .order_by(_a.c.id)
    .limit(_BATCH)
    .with_for_update(skip_locked=True)
)
_replay_any_ids = (
    select(_a.c.id)
    .where(_a.c.dead_letter.is_(True))
    .order_by(_a.c.id)
    .limit(_BATCH)
    .with_for_update(skip_locked=True)
)


def _replay_statement(ids: Select[Any]) -> Any:
    return replay_statement(_a.c.id.in_(ids.scalar_subquery()))


_REPLAY_QUEUE = Statement(_replay_statement(_replay_ids))
_REPLAY_ANY = Statement(_replay_statement(_replay_any_ids))


class DashboardRepository(Repository):
    """Reads for the dashboard's pages (and its one bulk action), on a lent connection."""

    async def now(self, executor: Executor) -> datetime:
        """The database clock (ages are computed against it, never the server's)."""
        return (await self._execute(executor, select(_NOW))).scalar_one()  # type: ignore[no-any-return]

    def messages_statement(self, *, queue_id: int, state: str | None, cursor: Cursor,
                           limit: int) -> tuple[Select[Any], bool]:
        """The statement of ``messages_page`` (exposed for the EXPLAIN tests)."""
        stmt = select(*_MESSAGE_COLUMNS, _state(_MAX_READ_CT).label("state"),
                      _preview(_m.c.payload)).where(_m.c.queue_id == queue_id)
        if state is not None:
            stmt = stmt.where(_state_filter(state, _MAX_READ_CT))
        return _keyset(stmt, _m.c.id, cursor, limit, newest_first=False)

    async def messages_page(self, executor: Executor, *, queue_id: int, state: str | None,
                            max_read_ct: int, cursor: Cursor, limit: int) -> Page:
        """Live messages of a queue, oldest first (FIFO), optionally in one state."""
        stmt, reversed_ = self.messages_statement(queue_id=queue_id, state=state,
                                                  cursor=cursor, limit=limit)
        rows = (await self._execute(executor, stmt, {"p_max_read_ct": max_read_ct})).all()
        return _page(rows, cursor, limit, reversed_=reversed_, newest_first=False)

    async def message_state(self, executor: Executor, *, message_id: int,
                            max_read_ct: int) -> str | None:
        """The state of one live message, or None if it is gone."""
        stmt = select(_state(_MAX_READ_CT)).where(_m.c.id == message_id)
        result = await self._execute(executor, stmt, {"p_max_read_ct": max_read_ct})
        return result.scalar_one_or_none()

    def dead_letters_statement(self, *, queue_id: int | None, cursor: Cursor,
                               limit: int) -> tuple[Select[Any], bool]:
        """The statement of ``dead_letters_page`` (exposed for the EXPLAIN tests)."""
        stmt = (select(*_DEAD_COLUMNS, _preview(_a.c.payload))
                .select_from(_a.outerjoin(_q, _q.c.id == _a.c.queue_id))
                .where(_a.c.dead_letter.is_(True)))
        if queue_id is not None:
            stmt = stmt.where(_a.c.queue_id == queue_id)
        return _keyset(stmt, _a.c.id, cursor, limit, newest_first=True)

    async def dead_letters_page(self, executor: Executor, *, queue_id: int | None,
                                cursor: Cursor, limit: int) -> Page:
        """Dead letters, newest first, of one queue or all."""
        stmt, reversed_ = self.dead_letters_statement(queue_id=queue_id, cursor=cursor,
                                                      limit=limit)
        rows = (await self._execute(executor, stmt)).all()
        return _page(rows, cursor, limit, reversed_=reversed_, newest_first=True)

    def dead_letter_count_statement(self, *, queue_id: int | None, cap: int) -> Select[Any]:
        """The statement of ``dead_letter_count`` (exposed for the EXPLAIN tests)."""
        inner = select(literal(1)).select_from(_a).where(_a.c.dead_letter.is_(True))
        if queue_id is not None:
            inner = inner.where(_a.c.queue_id == queue_id)
        return select(func.count()).select_from(inner.limit(cap).subquery())

    async def dead_letter_count(self, executor: Executor, *, queue_id: int | None,
                                cap: int) -> int:
        """How many dead letters, counting no further than ``cap``."""
        stmt = self.dead_letter_count_statement(queue_id=queue_id, cap=cap)
        return int((await self._execute(executor, stmt)).scalar_one())

    def throughput_statement(self, *, queue_id: int | None) -> Select[Any]:
        """The statement of ``throughput`` (exposed for the EXPLAIN tests)."""
        bucket = bindparam("p_bucket", type_=Integer)
        ago = cast(func.floor(func.extract("epoch", _NOW - _a.c.archived_at) / bucket),
                   Integer).label("ago")
        stmt = (select(_a.c.queue_id, ago, func.count().label("n"))
                .where(_a.c.archived_at > _NOW - bindparam("p_window", type_=Interval),
                       _a.c.dead_letter.is_(False))
                .group_by(_a.c.queue_id, ago))
        if queue_id is not None:
            stmt = stmt.where(_a.c.queue_id == queue_id)
        return stmt

    async def throughput(self, executor: Executor, *, queue_id: int | None, buckets: int,
                         bucket_seconds: int) -> dict[int, builtins.list[int]]:
        """Messages processed (archived, not dead) per time bucket, oldest bucket first.

        Returns:
            Per queue id, ``buckets`` counts; the last one is the bucket ending now.
        """
        stmt = self.throughput_statement(queue_id=queue_id)
        rows = await self._execute(executor, stmt, {
            "p_bucket": bucket_seconds,
            "p_window": timedelta(seconds=buckets * bucket_seconds),
        })
        series: dict[int, builtins.list[int]] = {}
        for row in rows.all():
            ago = int(row.ago)
            if 0 <= ago < buckets:
                series.setdefault(int(row.queue_id), [0] * buckets)[buckets - 1 - ago] += int(row.n)
        return series

    def workers_statement(self, *, status: str | None, cursor: Cursor,
                          limit: int) -> tuple[Select[Any], bool]:
        """The statement of ``workers_page`` (exposed for the EXPLAIN tests)."""
        held = (select(func.count()).select_from(_m)
                .where(_m.c.consumer_worker_id == _w.c.id).scalar_subquery())
        stmt = (select(*_w.c, _q.c.queue_name, (_NOW - _w.c.heartbeat_at).label("age"),
                       (_NOW - _w.c.started_at).label("started"), held.label("held"))
                .select_from(_w.outerjoin(_q, _q.c.id == _w.c.queue_id)))
        if status is not None:
            stmt = stmt.where(_w.c.status == status)
        return _keyset(stmt, _w.c.id, cursor, limit, newest_first=False)

    async def workers_page(self, executor: Executor, *, status: str | None, cursor: Cursor,
                           limit: int) -> Page:
        """Workers by id, with their queue's name, heartbeat age and messages held."""
        stmt, reversed_ = self.workers_statement(status=status, cursor=cursor, limit=limit)
        rows = (await self._execute(executor, stmt)).all()
        return _page(rows, cursor, limit, reversed_=reversed_, newest_first=False)

    async def replay_dead_letters(self, executor: Executor, *, queue_id: int | None,
                                  batch: int) -> int:
        """Replay up to ``batch`` dead letters (oldest first) as fresh messages; how many."""
        if queue_id is None:
            rows = await self._rows(executor, _REPLAY_ANY, {
                "p_batch": batch, "p_channel": self.channel})
        else:
            rows = await self._rows(executor, _REPLAY_QUEUE, {
                "p_batch": batch, "p_queue_id": queue_id, "p_channel": self.channel})
        return len(rows)
