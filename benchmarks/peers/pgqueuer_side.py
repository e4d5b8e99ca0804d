"""PgQueuer (``pip install pgqueuer[asyncpg]``) through its public API, for the scenarios.

Run by ``benchmarks.peers.remote`` as ``python -m benchmarks.peers.pgqueuer_side`` in
PgQueuer's own virtualenv. How each ``benchmarks.api`` call maps onto PgQueuer:

* ``enqueue(payload)``: ``Queries.enqueue("bench", json_bytes)``;
  ``enqueue_batch(payloads)``: ``Queries.enqueue(["bench"] * n, [json_bytes, ...],
  [0] * n)``, one statement. PgQueuer payloads are bytes: the compact JSON of the
  payload, encoded as every side encodes it.
* ``dequeue(n)``: ``Queries.dequeue(batch_size=n, ...)``, the statement its worker loop
  claims with (PgQueuer has no "claim n" call meant for applications; this is the
  closest public one). ``archive_batch(ids)``: ``Queries.log_jobs([(job, "successful",
  None), ...])``, which deletes the jobs from the queue table and writes them to
  ``pgqueuer_log``, what its worker loop does after a handler returns.
* ``consume(handler, ...)``: its own worker loop, ``QueueManager.run(batch_size=n)``
  with ``handler`` registered as the entrypoint (``mode=drain`` when the scenario stops
  at an empty queue); an idle ``QueueManager`` sleeps on LISTEN (PgQueuer's table
  trigger notifies on every change). One asyncpg connection per client
  (``AsyncpgDriver``), like every other side.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import asyncpg
from pgqueuer import Queries, QueueManager
from pgqueuer.models import Job
from pgqueuer.ports.repository import EntrypointExecutionParameter
from pgqueuer.types import QueueEntrypoint, QueueExecutionMode, QueueManagerId

from benchmarks.api import QUEUE, ConsumerLike, Handler, Payload, ProducerLike, encode
from benchmarks.peers import serve

_HEARTBEAT_TIMEOUT = timedelta(seconds=30)  # QueueManager.run's default


class PgqMessage(NamedTuple):
    """A claimed job as the scenarios see it: id and decoded payload."""

    id: int
    payload: Payload


def _decode(job: Job) -> PgqMessage:
    return PgqMessage(int(job.id), json.loads(job.payload or b"null"))


class PgqProducer:
    """``Queries.enqueue`` on one connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.queries = Queries.from_asyncpg_connection(conn)

    async def enqueue(self, payload: Payload) -> int:
        (job_id,) = await self.queries.enqueue(QUEUE, encode(payload).encode())
        return int(job_id)

    async def enqueue_batch(self, payloads: Sequence[Payload]) -> list[int]:
        n = len(payloads)
        ids = await self.queries.enqueue([QUEUE] * n, [encode(p).encode() for p in payloads],
                                         [0] * n)
        return sorted(int(i) for i in ids)

    async def close(self) -> None:
        await self.conn.close()


class PgqConsumer:
    """``Queries.dequeue`` + ``Queries.log_jobs``, and ``QueueManager.run`` as the loop."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.queries = Queries.from_asyncpg_connection(conn)
        self._manager_id = QueueManagerId(uuid.uuid4())
        self._entrypoints = {QueueEntrypoint(QUEUE): EntrypointExecutionParameter(
            concurrency_limit=0)}
        self._held: dict[int, Job] = {}

    async def dequeue(self, limit: int = 1) -> list[PgqMessage]:
        jobs = await self.queries.dequeue(
            batch_size=limit, entrypoints=self._entrypoints,
            queue_manager_id=self._manager_id, global_concurrency_limit=None,
            heartbeat_timeout=_HEARTBEAT_TIMEOUT)
        self._held.update((int(job.id), job) for job in jobs)
        return [_decode(job) for job in jobs]

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]:
        jobs = [self._held.pop(i) for i in message_ids]
        await self.queries.log_jobs([(job, "successful", None) for job in jobs])
        return [True] * len(jobs)

    async def consume(self, handler: Handler, *, batch_size: int, concurrency: int = 1,
                      poll_interval: float = 1.0, stop: asyncio.Event | None = None,
                      stop_when_idle: bool = False) -> int:
        """``QueueManager.run`` with ``handler`` as the entrypoint; ``concurrency`` is
        PgQueuer's default (no cap on tasks beyond the batch it claims)."""
        manager = QueueManager(self.queries)
        handled = 0

        @manager.entrypoint(QUEUE)
        async def entrypoint(job: Job) -> None:
            nonlocal handled
            await handler(_decode(job))
            handled += 1

        async def stopper() -> None:
            if stop is not None:
                await stop.wait()
                manager.shutdown.set()

        watcher = asyncio.create_task(stopper())
        try:
            if stop_when_idle:
                # Drain mode ends at an empty queue; an idle wait in between is bounded
                # by the scenario's poll interval, as for the other sides.
                await manager.run(batch_size=batch_size, mode=QueueExecutionMode.drain,
                                  dequeue_timeout=timedelta(seconds=poll_interval))
            else:
                await manager.run(batch_size=batch_size)
        finally:
            watcher.cancel()
        return handled

    async def close(self) -> None:
        await self.conn.close()


class PgqueuerSide:
    """PgQueuer's schema (``Queries.install``), producers and consumers."""

    name = "pgqueuer"
    distribution = "pgqueuer"
    wake_up = ("QueueManager.run's LISTEN/NOTIFY (PgQueuer's trigger on its queue table "
               "notifies on every insert, update and delete)")

    async def install(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await Queries.from_asyncpg_connection(conn).install()
        finally:
            await conn.close()

    async def producer(self, dsn: str, index: int = 0) -> ProducerLike:
        return PgqProducer(await asyncpg.connect(dsn))

    async def consumer(self, dsn: str, index: int = 0, *, listen: bool = False,
                       poll_interval: float = 1.0) -> ConsumerLike:
        return PgqConsumer(await asyncpg.connect(dsn))

    async def prepare(self, dsn: str, *, latency: bool) -> None:
        return None

    async def preload(self, dsn: str, payloads: Sequence[Payload]) -> None:
        producer = PgqProducer(await asyncpg.connect(dsn))
        try:
            for start in range(0, len(payloads), 5000):
                await producer.enqueue_batch(payloads[start:start + 5000])
            await producer.conn.execute("ANALYZE")
        finally:
            await producer.close()

    async def archived(self, dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            count: Any = await conn.fetchval(
                "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
            return int(count)
        finally:
            await conn.close()


if __name__ == "__main__":
    serve.main(PgqueuerSide())
