"""The scenarios, written once and run for either side.

Every scenario runs in a fresh database, warms its clients up (worker registration,
statement preparation, SQLAlchemy's compiled cache) outside the timed window, and times
only the loop itself: wall clock with ``time.perf_counter`` and the client process's CPU
with ``time.process_time`` (all clients of a scenario are asyncio tasks in this process,
each with its own connection; the server's CPU is not counted).

This module imports neither pgqrs nor SQLAlchemy (see ``benchmarks.api``): the peers run
these same functions in their own virtualenvs (``benchmarks.peers``).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from benchmarks.api import QUEUE, ConsumerLike, Payload, Side, encode


@dataclass
class Measurement:
    """One timed run: messages moved, wall and CPU seconds, per-call latencies."""

    messages: int
    seconds: float
    cpu_seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds

    @property
    def cpu_per_message(self) -> float:
        """Client CPU seconds per message."""
        return self.cpu_seconds / self.messages

    def percentile(self, q: float) -> float | None:
        """Latency percentile ``q`` (0-100) in seconds, or None without samples."""
        if not self.latencies:
            return None
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


class Clock:
    """Times a block: wall seconds and this process's CPU seconds."""

    wall = 0.0
    cpu = 0.0

    def __enter__(self) -> Clock:
        gc.collect()
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0


def payload(n: int, sent: float = 0.0) -> Payload:
    """A ~110-byte JSON payload (111 bytes compact for 6-digit ``n``)."""
    return {"action": "send_email", "to": f"user{n:06d}@example.com",
            "subject": "Welcome to pgqrs", "n": n, "sent": round(sent, 6)}


def payloads(count: int) -> list[Payload]:
    """``count`` distinct payloads, numbered from 0."""
    return [payload(i) for i in range(count)]


async def preload(dsn: str, messages: int | Sequence[Payload]) -> None:
    """pgqrs schema: insert ``messages`` (a count, or the payloads) as visible messages in
    one statement, then ANALYZE (untimed; how the pgqrs side and the same-SQL floor
    preload)."""
    texts = [encode(p) for p in (payloads(messages) if isinstance(messages, int) else messages)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO pgqrs_messages (queue_id, payload) "
            "SELECT q.id, p::jsonb FROM pgqrs_queues q, unnest($2::text[]) p "
            "WHERE q.queue_name = $1", QUEUE, texts)
        await conn.execute("ANALYZE pgqrs_messages")
    finally:
        await conn.close()


async def archived(dsn: str) -> int:
    """pgqrs schema: how many messages reached the archive (a check after a drain)."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pgqrs_archive"))
    finally:
        await conn.close()


async def _expect(dsn: str, side: Side, count: int) -> None:
    got = await side.archived(dsn)
    if got != count:
        raise RuntimeError(f"{side.name}: {got} messages archived, expected {count}")


async def single_enqueue(side: Side, dsn: str, *, messages: int, warmup: int = 50
                         ) -> Measurement:
    """One client, ``enqueue(payload)`` in a loop; latency is per call."""
    producer = await side.producer(dsn)
    try:
        for i in range(warmup):
            await producer.enqueue(payload(i))
        payloads = [payload(i) for i in range(messages)]
        latencies: list[float] = []
        clock = time.perf_counter
        with Clock() as c:
            for p in payloads:
                t = clock()
                await producer.enqueue(p)
                latencies.append(clock() - t)
    finally:
        await producer.close()
    return Measurement(messages, c.wall, c.cpu, latencies)


async def batch_enqueue(side: Side, dsn: str, *, messages: int, batch: int,
                        warmup: int = 5) -> Measurement:
    """One client, ``enqueue_batch`` of ``batch`` payloads per call; latency per call."""
    producer = await side.producer(dsn)
    try:
        for _ in range(warmup):
            await producer.enqueue_batch([payload(i) for i in range(batch)])
        calls = max(1, messages // batch)
        chunks = [[payload(j) for j in range(i * batch, (i + 1) * batch)]
                  for i in range(calls)]
        latencies: list[float] = []
        clock = time.perf_counter
        with Clock() as c:
            for chunk in chunks:
                t = clock()
                await producer.enqueue_batch(chunk)
                latencies.append(clock() - t)
    finally:
        await producer.close()
    return Measurement(calls * batch, c.wall, c.cpu, latencies)


async def _consumers(side: Side, dsn: str, count: int) -> list[ConsumerLike]:
    consumers = [await side.consumer(dsn, i) for i in range(count)]
    for consumer in consumers:  # warm-up: one real claim + ack each
        message = (await consumer.dequeue(1))[0]
        await consumer.archive_batch([message.id])
    return consumers


async def drain(side: Side, dsn: str, *, messages: int, batch: int, consumers: int
                ) -> Measurement:
    """``consumers`` tasks each loop ``dequeue(batch)`` + ``archive_batch(ids)`` until the
    queue is empty; latency is per cycle (claim + ack)."""
    await side.preload(dsn, payloads(messages + consumers))
    clients = await _consumers(side, dsn, consumers)
    latencies: list[float] = []
    clock = time.perf_counter

    async def work(consumer: ConsumerLike) -> None:
        while True:
            t = clock()
            claimed = await consumer.dequeue(batch)
            if not claimed:
                return
            await consumer.archive_batch([m.id for m in claimed])
            latencies.append(clock() - t)

    try:
        with Clock() as c:
            await asyncio.gather(*(work(consumer) for consumer in clients))
    finally:
        for consumer in clients:
            await consumer.close()
    await _expect(dsn, side, messages + consumers)
    return Measurement(messages, c.wall, c.cpu, latencies)


async def _noop(message: Any) -> None:
    return None


async def worker_loop(side: Side, dsn: str, *, messages: int, batch: int) -> Measurement:
    """The side's own worker loop (pgqrs: ``Consumer.consume``) with a no-op handler,
    ``batch_size=concurrency=batch``, one consumer, until the queue is empty."""
    await side.preload(dsn, payloads(messages + 1))
    (consumer,) = await _consumers(side, dsn, 1)
    try:
        with Clock() as c:
            handled = await consumer.consume(_noop, batch_size=batch, concurrency=batch,
                                             poll_interval=0.01, stop=None,
                                             stop_when_idle=True)
    finally:
        await consumer.close()
    if handled != messages:
        raise RuntimeError(f"{side.name}: the worker loop handled {handled} of {messages}")
    await _expect(dsn, side, messages + 1)
    return Measurement(messages, c.wall, c.cpu)


async def latency(side: Side, dsn: str, *, rate: float, seconds: float, batch: int,
                  poll_interval: float, warmup: int = 20) -> Measurement:
    """A producer enqueues at ``rate`` msg/s with the send time in the payload while the
    side's worker loop runs; latency is enqueue call → handler start."""
    producer = await side.producer(dsn)
    consumer = await side.consumer(dsn, listen=True, poll_interval=poll_interval)
    total = warmup + max(1, round(rate * seconds))
    latencies: list[float] = []
    seen = 0
    all_seen = asyncio.Event()
    stop = asyncio.Event()
    clock = time.perf_counter

    async def handler(message: Any) -> None:
        nonlocal seen
        now = clock()
        if message.payload["n"] >= warmup:
            latencies.append(now - message.payload["sent"])
        seen += 1
        if seen == total:
            all_seen.set()

    task = asyncio.create_task(consumer.consume(
        handler, batch_size=batch, concurrency=batch, poll_interval=poll_interval,
        stop=stop, stop_when_idle=False))
    try:
        with Clock() as c:
            start = clock()
            for i in range(total):
                delay = start + i / rate - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                await producer.enqueue(payload(i, clock()))
            await asyncio.wait_for(all_seen.wait(), 30)
    finally:
        stop.set()
        await task
        await producer.close()
        await consumer.close()
    return Measurement(total, c.wall, c.cpu, latencies)
