"""The two things being measured: pgqrs itself and a raw-asyncpg floor.

Both sides expose the same duck-typed client API (pgqrs's), so one scenario function runs
either: ``producer.enqueue(dict)``, ``producer.enqueue_batch(list)``,
``consumer.dequeue(limit)``, ``consumer.archive_batch(ids)``, ``consumer.consume(...)``
and ``close()``. The pgqrs side hands out real ``pgqrs.Producer``/``pgqrs.Consumer``
objects, so nothing sits between a scenario and pgqrs.

The floor runs the statements pgqrs runs (the same tables, indexes, ``SKIP LOCKED`` claim
with the "worker still ready" check, and ``DELETE ... RETURNING`` into the archive), as
asyncpg prepared statements on one connection per client, each statement in its own
implicit transaction (one round trip). It is what a hand-written client of the same
schema costs, so ``pgqrs / floor`` is the price of the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, NamedTuple, Protocol

import asyncpg

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

ENQUEUE = """
INSERT INTO pgqrs_messages (queue_id, payload, vt, producer_worker_id)
VALUES ($1, $2::jsonb, now() + $3::interval, $4)
RETURNING id
"""

ENQUEUE_BATCH = """
INSERT INTO pgqrs_messages (queue_id, payload, vt, producer_worker_id)
SELECT $1, b.payload::jsonb, now() + $3::interval, $4
FROM unnest($2::text[]) WITH ORDINALITY AS b(payload, ord)
ORDER BY b.ord
RETURNING id
"""

DEQUEUE = """
WITH claim AS (
    SELECT m.id FROM pgqrs_messages m
    WHERE m.queue_id = $1 AND m.vt <= now() AND m.read_ct < $2
      AND EXISTS (SELECT 1 FROM pgqrs_workers w WHERE w.id = $3 AND w.status = 'ready')
    ORDER BY m.id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE pgqrs_messages m
SET vt = now() + $5::interval, read_ct = m.read_ct + 1, dequeued_at = now(),
    consumer_worker_id = $3
FROM claim
WHERE m.id = claim.id
RETURNING m.id, m.queue_id, m.payload, m.vt, m.enqueued_at, m.read_ct, m.dequeued_at,
          m.producer_worker_id, m.consumer_worker_id
"""

ARCHIVE = """
WITH moved AS (
    DELETE FROM pgqrs_messages
    WHERE id = ANY($1::bigint[]) AND consumer_worker_id = $2
    RETURNING *
)
INSERT INTO pgqrs_archive (original_msg_id, queue_id, payload, enqueued_at, vt, read_ct,
                           dequeued_at, producer_worker_id, consumer_worker_id, dead_letter)
SELECT id, queue_id, payload, enqueued_at, vt, read_ct, dequeued_at, producer_worker_id,
       consumer_worker_id, false
FROM moved
RETURNING original_msg_id
"""

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

    @classmethod
    async def open(cls, dsn: str, index: int) -> FloorProducer:
        conn, queue_id, worker_id = await _register(dsn, "floor-producer", index)
        return cls(conn, queue_id, worker_id, await conn.prepare(ENQUEUE),
                   await conn.prepare(ENQUEUE_BATCH))

    async def enqueue(self, payload: Payload) -> int:
        return int(await self._enqueue.fetchval(self.queue_id, encode(payload), _NO_DELAY,
                                                self.worker_id))

    async def enqueue_batch(self, payloads: Sequence[Payload]) -> list[int]:
        rows = await self._enqueue_batch.fetch(self.queue_id, [encode(p) for p in payloads],
                                               _NO_DELAY, self.worker_id)
        return sorted(r[0] for r in rows)

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

    @classmethod
    async def open(cls, dsn: str, index: int, *, listen: bool) -> FloorConsumer:
        conn, queue_id, worker_id = await _register(dsn, "floor-consumer", index)
        self = cls(conn, queue_id, worker_id, await conn.prepare(DEQUEUE),
                   await conn.prepare(ARCHIVE), listening=listen)
        if listen:
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
        return self

    async def dequeue(self, limit: int = 1) -> list[FloorMessage]:
        rows = await self._dequeue.fetch(self.queue_id, _MAX_READ_CT, self.worker_id, limit,
                                         _LEASE)
        return [FloorMessage(r[0], r[5], json.loads(r[2])) for r in rows]

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]:
        ids = list(message_ids)
        done = {r[0] for r in await self._archive.fetch(ids, self.worker_id)}
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
