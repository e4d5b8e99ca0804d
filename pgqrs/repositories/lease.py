"""Statements on ``pgqrs_maintenance``: the lease that makes one maintenance runner act.

The table has one row: who holds the lease and until when (database clock). A runner
*acquires* it when it is free or ran out (``FOR UPDATE SKIP LOCKED``: never waiting on
the holder), and starts every action's transaction with ``fence``, an ``UPDATE`` that
succeeds only for the holder of an unexpired lease and extends it. That row lock lasts
until the action commits, so no other runner can acquire the lease in the meantime, and
two actions never overlap. It is plain rows and row locks, so it works through pgbouncer
in transaction-pooling mode, where a session-level advisory lock would not.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Interval, Text, and_, bindparam, case, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pgqrs.models import maintenance_table
from pgqrs.repositories._base import Executor, Repository

_l = maintenance_table
_ME = bindparam("p_holder", type_=Text)
_TTL = bindparam("p_ttl", type_=Interval)
# clock_timestamp(), not now(): a lease runs from when it was renewed, not from when the
# renewing transaction started.
_CLOCK = func.clock_timestamp()

_free = (
    select(_l.c.id)
    .where(_l.c.id == 1, or_(_l.c.holder.is_(None), _l.c.holder == _ME,
                              _l.c.lease_until <= _CLOCK))
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_ACQUIRE = (
    update(_l)
    .where(_l.c.id == _free)
    .values(holder=_ME, lease_until=_CLOCK + _TTL,
            acquired_at=case((_l.c.holder == _ME, _l.c.acquired_at), else_=_CLOCK))
    .returning(_l.c.acquired_at)
)
_FENCE = (
    update(_l)
    .where(_l.c.id == 1, _l.c.holder == _ME, _l.c.lease_until > _CLOCK)
    .values(lease_until=_CLOCK + _TTL)
    .returning(_l.c.lease_until)
)
_ROUND = update(_l).where(_l.c.id == 1, _l.c.holder == _ME).values(last_round_at=func.now())
_RELEASE = (
    update(_l)
    .where(_l.c.id == 1, _l.c.holder == _ME)
    .values(holder=None, lease_until=literal("-infinity").cast(_l.c.lease_until.type))
)
_ENSURE = pg_insert(_l).values(id=1).on_conflict_do_nothing(index_elements=["id"])
_STATE = select(_l.c.holder, _l.c.acquired_at, _l.c.lease_until, _l.c.last_round_at,
                and_(_l.c.holder.is_not(None), _l.c.lease_until > _CLOCK).label("held"),
                _CLOCK.label("now")).where(_l.c.id == 1)


def _ttl(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


class LeaseRepository(Repository):
    """The maintenance lease: acquire, fence (check and extend), release, inspect."""

    async def acquire(self, executor: Executor, holder: str, ttl: float) -> datetime | None:
        """Take (or renew) the lease for ``ttl`` seconds if it is free, expired or ours.

        Returns:
            When ``holder`` acquired it; None if another runner holds it, or is acting.
        """
        params = {"p_holder": holder, "p_ttl": _ttl(ttl)}
        row = (await self._execute(executor, _ACQUIRE, params)).first()
        if row is None and await self.state(executor) is None:
            await self._execute(executor, _ENSURE)  # the row was deleted: put it back
            row = (await self._execute(executor, _ACQUIRE, params)).first()
        return row[0] if row is not None else None

    async def fence(self, executor: Executor, holder: str, ttl: float) -> bool:
        """Start an action: True if ``holder`` still holds the lease (now extended).

        Call it first in the action's transaction: until that commits, the row stays
        locked and no other runner can take the lease over.
        """
        params = {"p_holder": holder, "p_ttl": _ttl(ttl)}
        return (await self._execute(executor, _FENCE, params)).first() is not None

    async def finish_round(self, executor: Executor, holder: str) -> None:
        """Record that ``holder`` completed a round (``last_round_at``)."""
        await self._execute(executor, _ROUND, {"p_holder": holder})

    async def release(self, executor: Executor, holder: str) -> bool:
        """Give the lease up, so another runner can take over at once; True if held."""
        result = await self._execute(executor, _RELEASE.returning(_l.c.id),
                                     {"p_holder": holder})
        return result.first() is not None

    async def state(self, executor: Executor) -> dict[str, Any] | None:
        """The lease row, or None if it is missing.

        Keys: ``holder``, ``acquired_at``, ``lease_until``, ``last_round_at``, ``held``
        (an unexpired lease is held) and ``now`` (the database clock).
        """
        row = (await self._execute(executor, _STATE)).mappings().first()
        return dict(row) if row is not None else None
