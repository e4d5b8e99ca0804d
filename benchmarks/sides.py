"""The two things being measured: pgqrs itself and a raw-asyncpg floor.

Both sides expose the same duck-typed client API (pgqrs's), so one scenario function runs
either: ``producer.enqueue(dict)``, ``producer.enqueue_batch(list)``,
``consumer.dequeue(limit)``, ``consumer.archive_batch(ids)``, ``consumer.consume(...)``
and ``close()``. The pgqrs side hands out real ``pgqrs.Producer``/``pgqrs.Consumer``
objects, so nothing sits between a scenario and pgqrs.

The floor runs the statements pgqrs runs (the same tables, indexes, ``SKIP LOCKED`` claim
with the "worker still ready" check, and ``DELETE ... RETURNING`` into the archive), as
asyncpg prepared statements on one connection per client, each statement in its own
implicit transaction (one round trip). The statements are pgqrs's own, compiled from
``pgqrs.repositories.messages`` (``benchmarks/pgqrs_sql.py``), so they cannot drift from
what pgqrs sends. It is what a hand-written client of the same schema costs, so
``pgqrs / floor`` is the price of the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, NamedTuple, Protocol

import asyncpg

from benchmarks import pgqrs_sql
from benchmarks.server import QUEUE
from pgqrs import Consumer, Producer

Payload = dict[str, Any]


class Message(Protocol):
    """What a handler receives: a message id and its decoded JSON payload."""

    @property
    def id(self) -> int: ...

    @property
    def payload(self) -> Payload: ...


Handler = Callable[[Any], Awaitable[object]]


class ProducerLike(Protocol):
    """The producer API both sides offer."""

    async def enqueue(self, payload: Payload) -> int: ...

    async def enqueue_batch(self, payloads: Sequence[Payload]) -> list[int]: ...

    async def close(self) -> None: ...


class ConsumerLike(Protocol):
    """The consumer API both sides offer."""

    async def dequeue(self, limit: int = 1) -> Sequence[Message]: ...

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]: ...

    async def consume(self, handler: Handler, *, batch_size: int, concurrency: int,
                      poll_interval: float, stop: asyncio.Event | None,
                      stop_when_idle: bool) -> int: ...

    async def close(self) -> None: ...


class Side(Protocol):
    """A way to build producers and consumers on a database."""

    name: str
    wake_up: str
    """How an idle consumer learns about new messages (shown with the latency row)."""

    async def producer(self, dsn: str, index: int = 0) -> ProducerLike: ...

    async def consumer(self, dsn: str, index: int = 0, *, listen: bool = False,
                       poll_interval: float = 1.0) -> ConsumerLike: ...

    async def prepare(self, dsn: str, *, latency: bool) -> None:
        """Get a fresh database ready for one run (``latency``: the latency scenario)."""
        ...


# --------------------------------------------------------------------------- pgqrs


class PgqrsSide:
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


def encode(payload: Payload) -> str:
    """Compact JSON, as pgqrs encodes it (minus pgqrs's validation walk)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


class FloorMessage(NamedTuple):
    """A claimed message: id, delivery count and decoded payload."""

    id: int
    read_ct: int
    payload: Payload


async def _register(dsn: str, hostname: str, port: int) -> tuple[asyncpg.Connection, int, int]:
    """Connect; return the connection, the queue id and a new worker row's id."""
    conn = await asyncpg.connect(dsn)
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


class FloorConsumer:
    """The claim and the archive move as prepared statements; a minimal worker loop."""

    def __init__(self, conn: asyncpg.Connection, queue_id: int, worker_id: int,
                 dequeue: asyncpg.prepared_stmt.PreparedStatement,
                 archive: asyncpg.prepared_stmt.PreparedStatement, *, listening: bool) -> None:
        self.conn, self.queue_id, self.worker_id = conn, queue_id, worker_id
        self._dequeue, self._archive = dequeue, archive
        self._listening = listening
        self._wake = asyncio.Event()
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

    @classmethod
    async def open(cls, dsn: str, index: int, *, listen: bool) -> FloorConsumer:
        conn, queue_id, worker_id = await _register(dsn, "floor-consumer", index)
        self = cls(conn, queue_id, worker_id, await conn.prepare(pgqrs_sql.claim().sql),
                   await conn.prepare(pgqrs_sql.archive().sql), listening=listen)
        if listen:
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
        return self

    async def dequeue(self, limit: int = 1) -> list[FloorMessage]:
        rows = await self._dequeue.fetch(*self._claim_args(limit))
        self._read_cts.update((r["id"], r["read_ct"]) for r in rows)
        return [FloorMessage(r["id"], r["read_ct"], json.loads(r["payload"])) for r in rows]

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]:
        ids = list(message_ids)
        done = {r["original_msg_id"] for r in await self._archive.fetch(*self._archive_args(ids))}
        return [i in done for i in ids]

    async def consume(self, handler: Handler, *, batch_size: int, concurrency: int = 1,
                      poll_interval: float = 1.0, stop: asyncio.Event | None = None,
                      stop_when_idle: bool = False) -> int:
        """Claim a batch, run the handler on each message in turn, archive the batch.

        Idle: with LISTEN, sleep until a notification (0.1 s cap, to notice ``stop``);
        otherwise sleep ``poll_interval``. ``concurrency`` is ignored (handlers run in
        turn, which is the cheapest way to run a no-op handler).
        """
        handled = 0
        while stop is None or not stop.is_set():
            self._wake.clear()
            batch = await self.dequeue(batch_size)
            if not batch:
                if stop_when_idle:
                    break
                timeout = 0.1 if self._listening else poll_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            for message in batch:
                await handler(message)
            await self.archive_batch([m.id for m in batch])
            handled += len(batch)
        return handled

    async def close(self) -> None:
        await self.conn.close()


class FloorSide:
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
