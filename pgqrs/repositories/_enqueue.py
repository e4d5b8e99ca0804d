"""Enqueue statements: plain, deduplicated, grouped, and batches carrying options.

Each shape is the cheapest statement for its case, so the plain enqueue stays what it was:
- ``ENQUEUE`` / ``ENQUEUE_BATCH``: no key, no group (options shared by the batch);
- ``ENQUEUE_DEDUP``: one message with a dedup key: ``INSERT ... ON CONFLICT DO NOTHING``
  plus, in the same statement, the id of the live message holding the key (visible in
  the statement's snapshot); only a key taken by a transaction that committed *while* the
  statement ran needs a second look (``EXISTING``);
- ``ENQUEUE_GROUP``: one message into a group (the group row's upsert decides ``parked``);
- ``ENQUEUE_ITEMS``: a batch with options per message (``_groups.entering``), keyed rows
  skipped when their key is live; none of its rows has both a group and a key;
- a grouped message that also has a key takes three statements in one transaction
  (``LOCK_GROUPS``, ``INSERT_PARKED``, ``SETTLE_GROUPS``), so that a duplicate never
  counts in its group: see ``Enqueuing.enqueue_items``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    Interval,
    SmallInteger,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pgqrs import errors
from pgqrs._validation import Item, Options
from pgqrs.models import groups_table, messages_table
from pgqrs.repositories._base import EncodedJSONB, Executor, Repository, Statement
from pgqrs.repositories._groups import CHANNEL, ENTRY_COLUMNS, entering, locked_queue, notified

_m = messages_table
_g = groups_table
_NOW = func.now()
_QUEUE = bindparam("p_queue_id", type_=BigInteger)
_WORKER = bindparam("p_worker_id", type_=BigInteger)
_DELAY = bindparam("p_delay", type_=Interval)
_PRIORITY = bindparam("p_priority", type_=SmallInteger)
_HEADERS = bindparam("p_headers", type_=EncodedJSONB)
_KEY = bindparam("p_dedup_key", type_=Text)
_GROUP = bindparam("p_group", type_=Text)
_KEYS = bindparam("p_dedup_keys", type_=ARRAY(Text))
_GROUPS = bindparam("p_groups", type_=ARRAY(Text))


def _notifying(statement: Any) -> Any:
    return notified(statement.cte("changed"))


# The queue's row, locked for the statement (see _groups.locked_queue): the only guard
# against enqueueing into a queue being deleted now that no foreign key checks each row.
_LOCKED = locked_queue(_QUEUE)
_one: dict[str, Any] = {
    "queue_id": _LOCKED, "payload": bindparam("p_payload", type_=EncodedJSONB),
    "vt": _NOW + _DELAY, "producer_worker_id": _WORKER, "priority": _PRIORITY,
    "headers": _HEADERS,
}
ENQUEUE = Statement(_notifying(
    insert(_m).values(**_one).returning(_m.c.id, _m.c.queue_id, _m.c.dedup_key)
))

_keyed = (
    pg_insert(_m).values(**_one, dedup_key=_KEY)
    .on_conflict_do_nothing(index_elements=["queue_id", "dedup_key"],
                            index_where=_m.c.dedup_key.is_not(None))
    .returning(_m.c.id, _m.c.queue_id, _m.c.dedup_key)
    .cte("changed")
)
ENQUEUE_DEDUP = Statement(
    select(_keyed.c.id, literal(True).label("created"),
           func.pg_notify(CHANNEL, cast(_keyed.c.queue_id, Text)).label("notified"))
    .union_all(select(_m.c.id, literal(False), null())
               .where(_m.c.queue_id == _QUEUE, _m.c.dedup_key == _KEY))
)
EXISTING = Statement(
    select(_m.c.id, _m.c.dedup_key)
    .where(_m.c.queue_id == _QUEUE, _m.c.dedup_key == any_(_KEYS))
)

_joined = (
    pg_insert(_g).values(queue_id=_QUEUE, group_key=_GROUP, live=1)
    .on_conflict_do_update(index_elements=["queue_id", "group_key"],
                           set_={"live": _g.c.live + 1})
    .returning(_g.c.live)
    .cte("entered")
)
ENQUEUE_GROUP = Statement(_notifying(
    insert(_m).from_select(
        [*_one, "group_key", "parked"],
        select(*_one.values(), _GROUP, _joined.c.live > 1),
    ).returning(_m.c.id, _m.c.queue_id, _m.c.dedup_key)
))

_payloads = (
    func.unnest(bindparam("p_payloads", type_=ARRAY(Text)))
    .table_valued("payload", with_ordinality="ord")
    .render_derived()
)
ENQUEUE_BATCH = Statement(_notifying(
    insert(_m).from_select(
        ["queue_id", "payload", "vt", "producer_worker_id", "priority", "headers"],
        select(_LOCKED, cast(_payloads.c.payload, JSONB), _NOW + _DELAY, _WORKER, _PRIORITY,
               _HEADERS).order_by(_payloads.c.ord),
    ).returning(_m.c.id, _m.c.queue_id, _m.c.dedup_key)
))


def _items() -> Any:
    """The rows of a batch with options per message, from parallel arrays."""
    items = (
        func.unnest(
            bindparam("p_payloads", type_=ARRAY(Text)),
            bindparam("p_delays", type_=ARRAY(Interval)),
            bindparam("p_priorities", type_=ARRAY(Integer)),
            bindparam("p_headers_list", type_=ARRAY(Text)),
            _GROUPS,
            _KEYS,
        )
        .table_valued("payload", "delay", "priority", "headers", "group_key", "dedup_key",
                      with_ordinality="ord")
        .render_derived()
    )
    return select(
        _LOCKED.label("queue_id"), cast(items.c.payload, JSONB).label("payload"),
        (_NOW + items.c.delay).label("vt"), _WORKER.label("producer_worker_id"),
        cast(items.c.priority, SmallInteger).label("priority"),
        cast(items.c.headers, JSONB).label("headers"),
        items.c.group_key, items.c.dedup_key, items.c.ord,
    )


def _with_existing(created: Any, *columns: Any) -> Any:
    """``created`` (new rows), then the live rows holding the batch's keys already."""
    return created.union_all(
        select(*columns).where(_m.c.queue_id == _QUEUE, _m.c.dedup_key == any_(_KEYS)))


ENQUEUE_ITEMS = Statement(_with_existing(
    notified(entering(_items().cte("rows"), skip_duplicates=True).cte("changed"))
    .add_columns(literal(True).label("created")),
    _m.c.id, _m.c.dedup_key, null(), literal(False),
))

# Grouped messages with keys, step 1: lock (creating if need be) the groups, read counts.
_named = select(func.unnest(_GROUPS).label("group_key")).distinct().subquery()
_locking = pg_insert(_g).from_select(
    ["queue_id", "group_key", "live"],
    select(_QUEUE, _named.c.group_key, literal(0)).order_by(_named.c.group_key),
)
LOCK_GROUPS = Statement(
    _locking.on_conflict_do_update(index_elements=["queue_id", "group_key"],
                                   set_={"live": _g.c.live})
    .returning(_g.c.group_key, _g.c.live)
)
# Step 2: insert every message, the grouped ones parked; skip live keys.
_rows = _items().subquery("rows")
_inserted = (
    pg_insert(_m)
    .from_select([*ENTRY_COLUMNS, "parked"],
                 select(*(_rows.c[c] for c in ENTRY_COLUMNS), _rows.c.group_key.is_not(None))
                 .order_by(_rows.c.ord))
    .on_conflict_do_nothing(index_elements=["queue_id", "dedup_key"],
                            index_where=_m.c.dedup_key.is_not(None))
    .returning(_m.c.id, _m.c.queue_id, _m.c.dedup_key, _m.c.group_key)
    .cte("changed")
)
INSERT_PARKED = Statement(_with_existing(
    select(_inserted.c.id, _inserted.c.dedup_key, _inserted.c.group_key,
           literal(True).label("created"),
           func.pg_notify(CHANNEL, cast(_inserted.c.queue_id, Text)).label("notified")),
    _m.c.id, _m.c.dedup_key, _m.c.group_key, literal(False), null(),
))
# Step 3: the new counts (a group left at 0 goes), and the new heads unparked.
_settled = (
    func.unnest(_GROUPS, bindparam("p_lives", type_=ARRAY(Integer)))
    .table_valued("group_key", "live").render_derived()
)
_same = and_(_g.c.queue_id == _QUEUE, _g.c.group_key == _settled.c.group_key)
_unparked = (
    update(_m)
    .where(_m.c.id == any_(bindparam("p_heads", type_=ARRAY(BigInteger))))
    .values(parked=False)
    .returning(_m.c.queue_id)
    .cte("unparked")
)
SETTLE_GROUPS = Statement(
    select(func.pg_notify(CHANNEL, cast(_unparked.c.queue_id, Text)).label("notified"))
    .add_cte(
        update(_g).where(_same, _settled.c.live > 0).values(live=_settled.c.live)
        .returning(_g.c.live).cte("counted"),
        delete(_g).where(_same, _settled.c.live == 0).returning(_g.c.live).cte("emptied"),
    )
)



_RETRIES = 5
"""Times a keyed enqueue looks again for a key that changed hands while it ran."""


class Enqueuing(Repository):
    """The enqueue half of ``MessageRepository``."""

    def _base(self, queue_id: int, worker_id: int | None) -> dict[str, Any]:
        return {"p_queue_id": queue_id, "p_worker_id": worker_id, "p_channel": self.channel}

    async def enqueue(self, executor: Executor, *, queue_id: int, payload: str,
                      options: Options, worker_id: int | None) -> int:
        """Insert one pre-encoded payload with its options; return its id.

        With a dedup key the id may be a live message's that holds the key already. A
        grouped message with a key takes several statements: ``executor`` must then be
        in a transaction.
        """
        if options.group is not None and options.dedup_key is not None:
            (found,) = await self.enqueue_items(executor, queue_id=queue_id,
                                                items=[Item(payload, options)],
                                                worker_id=worker_id)
            return found
        params = {"p_queue_id": queue_id, "p_worker_id": worker_id, "p_channel": self.channel,
                  "p_payload": payload, "p_delay": _interval(options.delay),
                  "p_priority": options.priority, "p_headers": options.headers}
        if options.group is not None:
            rows = await self._rows(executor, ENQUEUE_GROUP, {**params, "p_group": options.group})
        elif options.dedup_key is None:
            rows = await self._rows(executor, ENQUEUE, params)
        else:
            params["p_dedup_key"] = options.dedup_key
            for _ in range(_RETRIES):
                rows = await self._rows(executor, ENQUEUE_DEDUP, params)
                if not rows:  # the holder committed while we waited: look again
                    rows = await self._rows(executor, EXISTING, {
                        "p_queue_id": queue_id, "p_dedup_keys": [options.dedup_key]})
                if rows:
                    # Created beats existing (the holder was archived meanwhile).
                    return int(max(rows, key=lambda r: bool(r.get("created")))["id"])
            raise errors.DatabaseError(
                f"Could not enqueue with dedup_key {options.dedup_key!r}: messages holding "
                f"it kept leaving the queue while it was enqueued ({_RETRIES} tries)")
        return int(rows[0]["id"])

    async def enqueue_batch(self, executor: Executor, *, queue_id: int,
                            payloads: Sequence[str], options: Options,
                            worker_id: int | None) -> list[int]:
        """Insert payloads sharing ``options`` (no key, no group) in one statement.

        Returns the ids in input order.
        """
        rows = await self._rows(executor, ENQUEUE_BATCH, {
            "p_queue_id": queue_id, "p_worker_id": worker_id, "p_channel": self.channel,
            "p_payloads": payloads if isinstance(payloads, list) else list(payloads),
            "p_delay": _interval(options.delay), "p_priority": options.priority,
            "p_headers": options.headers,
        })
        # Ids come from one sequence in ordinality order, so sorting restores input order.
        ids: list[int] = [r["id"] for r in rows]  # bigint: an int already
        ids.sort()
        return ids

    async def enqueue_items(self, executor: Executor, *, queue_id: int,
                            items: Sequence[Item], worker_id: int | None) -> list[int]:
        """Insert messages with options of their own; ids in input order.

        A dedup key that repeats in the batch, or is held by a live message, gives that
        message's id and inserts nothing. One statement, unless a message has both a group
        and a key (then three: see the module docstring) or a key changed hands while the
        statement ran (then a second look): with keys, ``executor`` must be in a
        transaction for the batch to stay all or nothing.
        """
        first: dict[str, int] = {}  # a key's first position in the batch
        submitted = []
        for position, item in enumerate(items):
            key = item.options.dedup_key
            if key is None or first.setdefault(key, position) == position:
                submitted.append(position)
        both = any(items[i].options.group is not None and items[i].options.dedup_key
                   is not None for i in submitted)
        base = self._base(queue_id, worker_id)
        lives: dict[str, int] = {}
        if both:
            groups = sorted({g for i in submitted if (g := items[i].options.group)})
            rows = await self._rows(executor, LOCK_GROUPS, {**base, "p_groups": groups})
            lives = {r["group_key"]: int(r["live"]) for r in rows}
        ids: dict[int, int] = {}
        created: list[tuple[int, str | None]] = []  # (id, group) of the rows inserted
        pending = submitted
        for _ in range(_RETRIES):
            rows = await self._rows(executor, INSERT_PARKED if both else ENQUEUE_ITEMS,
                                    {**base, **_arrays([items[i] for i in pending])})
            made = sorted((r for r in rows if r["created"]), key=lambda r: int(r["id"]))
            made_keys = {r["dedup_key"] for r in made}
            inserted = [i for i in pending if items[i].options.dedup_key is None
                        or items[i].options.dedup_key in made_keys]
            for position, row in zip(inserted, made, strict=True):
                ids[position] = int(row["id"])
                created.append((int(row["id"]), items[position].options.group))
            held = {r["dedup_key"]: int(r["id"]) for r in rows if not r["created"]}
            missing = [i for i in pending if i not in ids]
            if missing:  # keys a transaction committed while we waited: look again
                keys = [items[i].options.dedup_key for i in missing]
                found = await self._rows(executor, EXISTING, {**base, "p_dedup_keys": keys})
                held.update({r["dedup_key"]: int(r["id"]) for r in found})
            for i in missing:
                if items[i].options.dedup_key in held:
                    ids[i] = held[items[i].options.dedup_key]
            pending = [i for i in pending if i not in ids]
            if not pending:
                break
        else:
            raise errors.DatabaseError(
                f"Could not enqueue {len(pending)} message(s) with dedup keys: messages "
                f"holding them kept leaving the queue while they were enqueued "
                f"({_RETRIES} tries)")
        if both:
            await self._settle_groups(executor, base, lives, created)
        out = []
        for position, item in enumerate(items):
            key = item.options.dedup_key
            out.append(ids[position if key is None else first[key]])
        return out

    async def _settle_groups(self, executor: Executor, base: dict[str, Any],
                             lives: dict[str, int], created: list[tuple[int, str | None]]
                             ) -> None:
        """Count the new messages into their (locked) groups; unpark new heads."""
        added: dict[str, list[int]] = {}
        for message_id, group in created:
            if group is not None:
                added.setdefault(group, []).append(message_id)
        groups = sorted(lives)
        heads = [min(added[g]) for g in groups if lives[g] == 0 and added.get(g)]
        await self._rows(executor, SETTLE_GROUPS, {
            **base, "p_groups": groups,
            "p_lives": [lives[g] + len(added.get(g, ())) for g in groups], "p_heads": heads,
        })


_NO_DELAY = timedelta(0)


def _interval(seconds: float | None) -> timedelta:
    return timedelta(seconds=seconds) if seconds else _NO_DELAY


def _arrays(items: Sequence[Item]) -> dict[str, list[Any]]:
    """The parallel arrays of ``_items()``."""
    return {
        "p_payloads": [i.payload for i in items],
        "p_delays": [_interval(i.options.delay) for i in items],
        "p_priorities": [i.options.priority for i in items],
        "p_headers_list": [i.options.headers for i in items],
        "p_groups": [i.options.group for i in items],
        "p_dedup_keys": [i.options.dedup_key for i in items],
    }
