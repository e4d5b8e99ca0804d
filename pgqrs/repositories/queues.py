"""Statements on ``pgqrs_queues``: queues and their policy (SPEC §12)."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Interval,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)

from pgqrs import errors
from pgqrs.models import archive_table, messages_table, queues_table, workers_table
from pgqrs.repositories import _groups
from pgqrs.repositories._base import Executor, Repository, Statement
from pgqrs.settings import POLICY_FIELDS
from pgqrs.types import QueueInfo, QueuePolicy, WorkerStatus

_queues = queues_table
_messages = messages_table
_archive = archive_table
_workers = workers_table

_CREATE = insert(_queues).values(queue_name=bindparam("p_name")).returning(*_queues.c)
_DURATIONS = ("visibility_timeout", "retry_backoff_base", "retry_backoff_max", "retention")
_CREATE_WITH_POLICY = _CREATE.values(
    max_read_ct=bindparam("p_max_read_ct"), paused=bindparam("p_paused"),
    **{name: bindparam(f"p_{name}", type_=Interval) for name in _DURATIONS},
)
_BY_NAME = select(*_queues.c).where(_queues.c.queue_name == bindparam("p_name"))
_BY_ID = select(*_queues.c).where(_queues.c.id == bindparam("p_id"))
_LOCK_BY_NAME = _BY_NAME.with_for_update()
_ISOLATION = select(func.current_setting("transaction_isolation"))
# FOR NO KEY UPDATE: a policy change must not wait for (or hold up) enqueues, which take
# FOR KEY SHARE on the queue row (_groups.locked_queue).
_LOCK_POLICY_BY_NAME = _BY_NAME.with_for_update(key_share=True)
_POLICY = Statement(select(
    _queues.c.max_read_ct, _queues.c.visibility_timeout, _queues.c.retry_backoff_base,
    _queues.c.retry_backoff_max, _queues.c.retention, _queues.c.paused,
).where(_queues.c.id == bindparam("p_id", type_=BigInteger)))
# A policy change can make messages claimable (resumed, more deliveries allowed): wake the
# queue's waiting consumers, as an enqueue would (see _notify).
_NOTIFY = select(func.pg_notify(bindparam("p_channel", type_=Text),
                                cast(bindparam("p_id", type_=BigInteger), Text)))


def _policy_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """The policy columns of a row, durations as seconds."""
    values = {name: row[name] for name in POLICY_FIELDS}
    for name in _DURATIONS:
        if values[name] is not None:
            values[name] = values[name].total_seconds()
    return values


def _info(row: Any) -> QueueInfo:
    m = row._mapping
    return QueueInfo(id=m["id"], queue_name=m["queue_name"], created_at=m["created_at"],
                     **_policy_values(m))


def to_policy(row: Mapping[str, Any]) -> QueuePolicy:
    """Build a ``QueuePolicy`` from a mapping with the six policy columns."""
    return QueuePolicy(**_policy_values(row))


def _column_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validated policy values (seconds) as column values (intervals)."""
    return {name: (timedelta(seconds=value) if name in _DURATIONS and value is not None
                   else value) for name, value in values.items()}


class QueueRepository(Repository):
    """Create, look up, list, delete and purge queues; read and change their policy."""

    async def create(self, executor: Executor, name: str,
                     policy: QueuePolicy | None = None) -> QueueInfo:
        """Insert a queue; a duplicate name raises ``QueueAlreadyExistsError``.

        Args:
            executor: where to run the statement.
            name: a validated queue name.
            policy: the queue's policy (validated); None leaves every column to its
                server default.
        """
        params: dict[str, Any] = {"p_name": name}
        if policy is not None:
            values = _column_values({f: getattr(policy, f) for f in POLICY_FIELDS})
            params.update({f"p_{f}": v for f, v in values.items()})
        statement = _CREATE if policy is None else _CREATE_WITH_POLICY
        result = await self._execute(executor, statement, params, queue_name=name)
        return _info(result.one())

    async def policy(self, executor: Executor, queue_id: int) -> QueuePolicy | None:
        """The queue's policy as stored now (one primary-key lookup), or None if it is gone.

        Cheap enough to call per claim batch, or once at a consumer's registration to
        compare with client-side options.
        """
        rows = await self._rows(executor, _POLICY, {"p_id": queue_id})
        return to_policy(rows[0]) if rows else None

    async def update(self, executor: Executor, name: str,
                     changes: Mapping[str, Any]) -> QueueInfo:
        """Change the given (validated) policy fields of a queue; return it as stored.

        The row is locked (without blocking enqueues) while the result is checked as a
        whole, and the queue's waiting consumers are woken so the change applies at once.

        Raises:
            QueueNotFoundError: no such queue.
            ValidationError: ``retry_backoff_max`` would end up below ``retry_backoff_base``.
        """
        row = (await self._execute(executor, _LOCK_POLICY_BY_NAME, {"p_name": name})).first()
        if row is None:
            raise errors.QueueNotFoundError(name)
        current = _info(row)
        if changes:
            base = changes.get("retry_backoff_base", current.retry_backoff_base)
            cap = changes.get("retry_backoff_max", current.retry_backoff_max)
            if cap < base:
                raise errors.ValidationError(
                    f"retry_backoff_max ({cap:g} s) must not be below retry_backoff_base "
                    f"({base:g} s) for queue {name!r}"
                )
            stmt = (update(_queues).where(_queues.c.id == current.id)
                    .values(**_column_values(changes)).returning(*_queues.c))
            current = _info((await self._execute(executor, stmt)).one())
            await self._execute(executor, _NOTIFY, {"p_channel": self.channel,
                                                    "p_id": current.id})
        return current

    async def find(self, executor: Executor, name: str) -> QueueInfo | None:
        """The queue called ``name``, or None."""
        row = (await self._execute(executor, _BY_NAME, {"p_name": name})).first()
        return _info(row) if row is not None else None

    async def get(self, executor: Executor, name: str) -> QueueInfo:
        """The queue called ``name``; raises ``QueueNotFoundError``."""
        info = await self.find(executor, name)
        if info is None:
            raise errors.QueueNotFoundError(name)
        return info

    async def get_by_id(self, executor: Executor, queue_id: int) -> QueueInfo | None:
        """The queue with this id, or None."""
        row = (await self._execute(executor, _BY_ID, {"p_id": queue_id})).first()
        return _info(row) if row is not None else None

    async def list(self, executor: Executor, limit: int | None = None,
                   offset: int = 0) -> builtins.list[QueueInfo]:
        """Queues ordered by id."""
        stmt = select(*_queues.c).order_by(_queues.c.id).limit(limit).offset(offset)
        return [_info(r) for r in await self._execute(executor, stmt)]

    async def count(self, executor: Executor) -> int:
        """Number of queues."""
        stmt = select(func.count()).select_from(_queues)
        return int((await self._execute(executor, stmt)).scalar_one())

    async def delete(self, executor: Executor, name: str) -> None:
        """Delete an idle queue with its archive and stopped workers.

        Raises:
            QueueNotFoundError: no such queue.
            QueueInUseError: live workers or messages remain.
            ConfigurationError: the transaction runs at REPEATABLE READ.
        """
        # Nothing but this check keeps an enqueue from landing in a queue being deleted
        # (pgqrs_messages has no foreign key): the enqueue holds the queue row FOR KEY
        # SHARE, the lock below waits for it, and the count after the wait must see its
        # message. READ COMMITTED takes a new snapshot for the count; SERIALIZABLE aborts
        # one of the two. REPEATABLE READ would count with the snapshot from before the
        # wait and delete a queue that just got a message.
        level = (await self._execute(executor, _ISOLATION)).scalar_one()
        if level == "repeatable read":
            raise errors.ConfigurationError(
                f"Cannot delete queue {name!r} in a REPEATABLE READ transaction: it could "
                "miss a message enqueued while it waits for the queue's lock. Run "
                "delete_queue at READ COMMITTED (the default) or SERIALIZABLE; nothing "
                "was deleted"
            )
        row = (await self._execute(executor, _LOCK_BY_NAME, {"p_name": name})).first()
        if row is None:
            raise errors.QueueNotFoundError(name)
        messages = (await self._execute(
            executor,
            select(func.count()).select_from(_messages).where(_messages.c.queue_id == row.id),
        )).scalar_one()
        live = (await self._execute(
            executor,
            select(func.count()).select_from(_workers).where(
                _workers.c.queue_id == row.id, _workers.c.status != WorkerStatus.STOPPED
            ),
        )).scalar_one()
        if messages or live:
            raise errors.QueueInUseError(name, messages=int(messages), live_workers=int(live))
        await self._execute(executor, delete(_archive).where(_archive.c.queue_id == row.id))
        await self._execute(executor, delete(_queues).where(_queues.c.id == row.id))

    async def purge(self, executor: Executor, queue_id: int) -> int:
        """Delete the queue's messages and archive rows; return how many rows went."""
        params = {"p_queue_id": queue_id}  # ordered groups go too (see _groups)
        await self._execute(executor, _groups.LOCK_QUEUE_GROUPS, params)
        live = await self._execute(
            executor, delete(_messages).where(_messages.c.queue_id == queue_id)
        )
        await self._execute(executor, _groups.DROP_EMPTY_GROUPS, params)
        archived = await self._execute(
            executor, delete(_archive).where(_archive.c.queue_id == queue_id)
        )
        return int(live.rowcount) + int(archived.rowcount)  # type: ignore[attr-defined]
