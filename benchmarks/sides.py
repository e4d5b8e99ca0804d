"""pgqrs itself and the same-SQL floor: a raw-asyncpg client running pgqrs's statements.

Both sides expose the duck-typed client API of ``benchmarks.api`` (pgqrs's), so one
scenario function runs either. The pgqrs side hands out real ``pgqrs.Producer``/``pgqrs.Consumer``
objects, so nothing sits between a scenario and pgqrs.

The floor runs the statements pgqrs runs (the same tables, indexes, ``SKIP LOCKED`` claim
with the "worker still ready" check, and ``DELETE ... RETURNING`` into the archive), as
asyncpg prepared statements on one connection per client, each statement in its own
implicit transaction (one round trip), planned as pgqrs plans them (its connections'
session setting: generic plans). The statements are pgqrs's own, compiled from
``pgqrs.repositories.messages`` (``benchmarks/pgqrs_sql.py``), so they cannot drift from
what pgqrs sends. It is what a hand-written client of the same schema costs, so
``pgqrs / floor`` is the price of the library.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import asyncpg

from benchmarks import pgqrs_sql, scenarios
from benchmarks.api import (
    QUEUE,
    ConsumerLike,
    Handler,
    LoopConsumer,
    Message,
    Payload,
    ProducerLike,
    Side,
    encode,
)
from pgqrs import Consumer, Producer

__all__ = ["ConsumerLike", "FloorConsumer", "FloorProducer", "FloorSide", "Handler",
           "Message", "Payload", "PgqrsSide", "ProducerLike", "Side", "encode"]


class PgqrsSchema:
    """Preload and archive count on the pgqrs schema (both sides of the same-SQL pair)."""

    async def preload(self, dsn: str, payloads: Sequence[Payload]) -> None:
        await scenarios.preload(dsn, payloads)

    async def archived(self, dsn: str) -> int:
        return await scenarios.archived(dsn)


# --------------------------------------------------------------------------- pgqrs


class PgqrsSide(PgqrsSchema):
    """Real ``pgqrs.Producer`` and ``pgqrs.Consumer`` objects, default settings."""

    name = "pgqrs"

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self.wake_up = (f"Consumer.consume(poll_interval={poll_interval:g}); uses LISTEN "
                        "automatically once pgqrs has it")

    async def producer(self, dsn: str, index: int = 0) -> ProducerLike:
        return Producer(dsn, QUEUE, "bench-producer", index)

    async def consumer(self, dsn: str, index: int = 0, *, listen: bool = False,
                       poll_interval: float = 1.0) -> ConsumerLike:
        return Consumer(dsn, QUEUE, "bench-consumer", index, visibility_timeout=30,
                        max_read_ct=5)

    async def prepare(self, dsn: str, *, latency: bool) -> None:
        return None


# --------------------------------------------------------------------------- floor

QUEUE_ID = "SELECT id FROM pgqrs_queues WHERE queue_name = $1"
REGISTER = ("INSERT INTO pgqrs_workers (hostname, port, queue_id) VALUES ($1, $2, $3) "
            "RETURNING id")

NOTIFY_CHANNEL = "pgqrs_bench_floor"
NOTIFY_TRIGGER = f"""
CREATE FUNCTION pgqrs_bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('{NOTIFY_CHANNEL}', ''); RETURN NULL; END $$;
CREATE TRIGGER pgqrs_bench_notify AFTER INSERT ON pgqrs_messages
FOR EACH STATEMENT EXECUTE FUNCTION pgqrs_bench_notify();
"""

_NO_DELAY = timedelta(0)
_LEASE = timedelta(seconds=30)
_MAX_READ_CT = 5


class FloorMessage(NamedTuple):
    """A claimed message: id, delivery count and decoded payload."""

    id: int
    read_ct: int
    payload: Payload


async def _register(dsn: str, hostname: str, port: int) -> tuple[asyncpg.Connection, int, int]:
    """Connect; return the connection, the queue id and a new worker row's id."""
    conn = await asyncpg.connect(dsn)
    await pgqrs_sql.session_setup(conn)  # planned as pgqrs's own connections plan
    queue_id = await conn.fetchval(QUEUE_ID, QUEUE)
    worker_id = await conn.fetchval(REGISTER, hostname, port, queue_id)
    return conn, int(queue_id), int(worker_id)


class FloorProducer:
    """``enqueue``/``enqueue_batch`` as single prepared statements on one connection."""

    def __init__(self, conn: asyncpg.Connection, queue_id: int, worker_id: int,
                 enqueue: asyncpg.prepared_stmt.PreparedStatement,
                 enqueue_batch: asyncpg.prepared_stmt.PreparedStatement) -> None:
        self.conn, self.queue_id, self.worker_id = conn, queue_id, worker_id
        self._enqueue, self._enqueue_batch = enqueue, enqueue_batch
        fixed = {"p_queue_id": queue_id, "p_delay": _NO_DELAY, "p_worker_id": worker_id,
                 "p_priority": 0, "p_headers": None}
        self._one_args = pgqrs_sql.enqueue().binder("p_payload", **fixed)
        self._many_args = pgqrs_sql.enqueue_batch().binder("p_payloads", **fixed)

    @classmethod
    async def open(cls, dsn: str, index: int) -> FloorProducer:
        conn, queue_id, worker_id = await _register(dsn, "floor-producer", index)
        return cls(conn, queue_id, worker_id, await conn.prepare(pgqrs_sql.enqueue().sql),
                   await conn.prepare(pgqrs_sql.enqueue_batch().sql))

    async def enqueue(self, payload: Payload) -> int:
        return int(await self._enqueue.fetchval(*self._one_args(encode(payload))))

    async def enqueue_batch(self, payloads: Sequence[Payload]) -> list[int]:
        rows = await self._enqueue_batch.fetch(
            *self._many_args([encode(p) for p in payloads]))
        return sorted(r["id"] for r in rows)

    async def close(self) -> None:
        await self.conn.close()


class FloorConsumer(LoopConsumer):
    """The claim and the archive move as prepared statements; a minimal worker loop.

    Its worker loop archives a handled batch and claims the next in pgqrs's fused
    statement, as ``Consumer.consume`` does (``archive_and_claim``).
    """

    def __init__(self, conn: asyncpg.Connection, queue_id: int, worker_id: int,
                 dequeue: asyncpg.prepared_stmt.PreparedStatement,
                 archive: asyncpg.prepared_stmt.PreparedStatement, *, listening: bool,
                 fused: asyncpg.prepared_stmt.PreparedStatement | None = None) -> None:
        super().__init__()
        self.conn, self.queue_id, self.worker_id = conn, queue_id, worker_id
        self._dequeue, self._archive, self._fused = dequeue, archive, fused
        self.listening = listening
        self._claim_args = pgqrs_sql.claim().binder(
            "p_limit", p_queue_id=queue_id, p_max_read_ct=_MAX_READ_CT, p_worker_id=worker_id,
            p_lease=_LEASE)
        # Acks name the delivery (read_ct at the claim), as pgqrs's do: remembered per id.
        self._read_cts: dict[int, int] = {}
        archive = pgqrs_sql.archive()
        ids_args = archive.binder("p_ids", p_worker_id=worker_id, p_read_cts=[])
        at = archive.names.index("p_read_cts")

        def archive_args(ids: list[int]) -> list[Any]:
            out = ids_args(ids)
            out[at] = [self._read_cts.pop(i, 0) for i in ids]
            return out

        self._archive_args = archive_args
        fused_sql = pgqrs_sql.archive_and_claim()
        fused_template = fused_sql.args(
            p_queue_id=queue_id, p_worker_id=worker_id, p_lease=_LEASE, p_ids=[],
            p_read_cts=[], p_limit=0)
        at_ids, at_cts, at_limit = (fused_sql.names.index(n)
                                    for n in ("p_ids", "p_read_cts", "p_limit"))

        def fused_args(ids: list[int], limit: int) -> list[Any]:
            out = fused_template.copy()
            out[at_ids], out[at_limit] = ids, limit
            out[at_cts] = [self._read_cts.pop(i, 0) for i in ids]
            return out

        self._fused_args = fused_args

    @classmethod
    async def open(cls, dsn: str, index: int, *, listen: bool) -> FloorConsumer:
        conn, queue_id, worker_id = await _register(dsn, "floor-consumer", index)
        self = cls(conn, queue_id, worker_id, await conn.prepare(pgqrs_sql.claim().sql),
                   await conn.prepare(pgqrs_sql.archive().sql), listening=listen,
                   fused=await conn.prepare(pgqrs_sql.archive_and_claim().sql))
        if listen:
            await conn.add_listener(NOTIFY_CHANNEL, self.wake)
        return self

    async def dequeue(self, limit: int = 1) -> list[FloorMessage]:
        rows = await self._dequeue.fetch(*self._claim_args(limit))
        self._read_cts.update((r["id"], r["read_ct"]) for r in rows)
        return [FloorMessage(r["id"], r["read_ct"], json.loads(r["payload"])) for r in rows]

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]:
        ids = list(message_ids)
        done = {r["original_msg_id"] for r in await self._archive.fetch(*self._archive_args(ids))}
        return [i in done for i in ids]

    async def archive_and_dequeue(self, message_ids: Sequence[int],
                                  limit: int) -> list[FloorMessage]:
        """Archive ``message_ids`` and claim up to ``limit``, in one statement."""
        assert self._fused is not None
        rows = await self._fused.fetch(*self._fused_args(list(message_ids), limit))
        claimed = [r for r in rows if r["id"] is not None]
        self._read_cts.update((r["id"], r["read_ct"]) for r in claimed)
        return [FloorMessage(r["id"], r["read_ct"], json.loads(r["payload"])) for r in claimed]

    async def close(self) -> None:
        await self.conn.close()


class FloorSide(PgqrsSchema):
    """Hand-written asyncpg clients of the pgqrs schema.

    Args:
        notify: ``"latency"`` installs the NOTIFY trigger only for the latency scenario
            (the floor's enqueues elsewhere pay nothing for wake-ups); ``"always"``
            installs it in every run, for parity with a library that notifies on every
            enqueue.
    """

    name = "floor"

    def __init__(self, notify: str = "latency") -> None:
        self.notify = notify
        where = "in every run" if notify == "always" else "for the latency scenario only"
        self.wake_up = ("LISTEN/NOTIFY (an AFTER INSERT ... FOR EACH STATEMENT trigger calls "
                        f"pg_notify; installed {where})")

    async def producer(self, dsn: str, index: int = 0) -> ProducerLike:
        return await FloorProducer.open(dsn, index)

    async def consumer(self, dsn: str, index: int = 0, *, listen: bool = False,
                       poll_interval: float = 1.0) -> ConsumerLike:
        return await FloorConsumer.open(dsn, index, listen=listen)

    async def prepare(self, dsn: str, *, latency: bool) -> None:
        if not (latency or self.notify == "always"):
            return
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(NOTIFY_TRIGGER)
        finally:
            await conn.close()
