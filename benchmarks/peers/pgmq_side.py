"""pgmq (``pip install pgmq[async]``, the Python client) through its public API.

Run by ``benchmarks.peers.remote`` as ``python -m benchmarks.peers.pgmq_side`` in pgmq's
own virtualenv. The pgmq extension cannot be installed on the benchmark server, so the
schema is pgmq's SQL-only install, the ``pgmq.sql`` the client package ships pinned to
an extension release (``pgmq.install_pgmq_from_sql``; executed here as one script on an
asyncpg connection). How each ``benchmarks.api`` call maps onto the client's
``AsyncPGMQueue`` (asyncpg; every call runs in its own BEGIN/COMMIT, as the client
does):

* ``enqueue(payload)``: ``send("bench", payload)``; ``enqueue_batch``:
  ``send_batch("bench", payloads)``.
* ``dequeue(n)``: ``read("bench", vt=30, qty=n)``; ``archive_batch(ids)``:
  ``archive_batch("bench", ids)`` (the archive table ``pgmq.a_bench``).
* ``consume(handler, ...)``: pgmq has no worker loop; the closest is the plain loop of
  its own calls (``benchmarks.api.LoopConsumer``): ``read`` a batch, run the handler on
  each message in turn, ``archive_batch``. An idle consumer in the latency scenario
  sleeps until pgmq's insert notification (``enable_notify("bench",
  throttle_interval_ms=0)``, a per-row trigger, enabled for that scenario only) reaches
  ``AsyncNotificationListener``.

Each client has its own pool of one connection, like every other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg
from pgmq import get_embedded_install_sql
from pgmq.async_queue import PGMQueue
from pgmq.notify_listener import AsyncNotificationListener

from benchmarks.api import QUEUE, ConsumerLike, LoopConsumer, Payload, ProducerLike
from benchmarks.peers import serve

_VT = 30  # seconds, the lease every side uses

# The notification listener logs a warning for every notification, whose payload pgmq
# leaves empty; with no handler configured Python would print each one.
logging.getLogger("pgmq").setLevel(logging.ERROR)


class PgmqMessage(NamedTuple):
    """A read message as the scenarios see it: id and decoded payload."""

    id: int
    payload: Payload


async def _client(dsn: str) -> PGMQueue:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    # The pool is ours, so the client does not try CREATE EXTENSION; conn_string is
    # what the notification listener connects with.
    return PGMQueue(conn_string=dsn, pool=pool, init_extension=False)


class PgmqProducer:
    """``send`` / ``send_batch``."""

    def __init__(self, client: PGMQueue) -> None:
        self.client = client

    async def enqueue(self, payload: Payload) -> int:
        return int(await self.client.send(QUEUE, payload))

    async def enqueue_batch(self, payloads: Sequence[Payload]) -> list[int]:
        return sorted(int(i) for i in await self.client.send_batch(QUEUE, list(payloads)))

    async def close(self) -> None:
        if self.client.pool is not None:
            await self.client.pool.close()


class PgmqConsumer(LoopConsumer):
    """``read`` + ``archive_batch``; the plain loop of them as the worker loop."""

    def __init__(self, client: PGMQueue, *, listening: bool) -> None:
        super().__init__()
        self.client = client
        self.listening = listening
        self._listener: AsyncNotificationListener | None = None
        self._listen_task: asyncio.Task[None] | None = None

    async def start_listening(self) -> None:
        """Wake the loop on pgmq's insert notifications (its own listener class)."""
        self._listener = AsyncNotificationListener(self.client)

        async def wake(_: dict[str, Any]) -> None:
            self.wake()

        self._listen_task = asyncio.create_task(self._listener.listen(QUEUE, wake))
        await asyncio.sleep(0.2)  # let it connect and LISTEN before the producer starts

    async def dequeue(self, limit: int = 1) -> list[PgmqMessage]:
        read = await self.client.read(QUEUE, vt=_VT, qty=limit)
        messages = [] if read is None else read if isinstance(read, list) else [read]
        return [PgmqMessage(m.msg_id, m.message) for m in messages]

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]:
        ids = list(message_ids)
        done = set(await self.client.archive_batch(QUEUE, ids))
        return [i in done for i in ids]

    async def close(self) -> None:
        if self._listener is not None and self._listen_task is not None:
            self._listener.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
        if self.client.pool is not None:
            await self.client.pool.close()


class PgmqSide:
    """pgmq's SQL-only install, producers and consumers."""

    name = "pgmq"
    distribution = "pgmq"
    wake_up = ("pgmq's insert notification (enable_notify, throttle 0 ms, latency "
               "scenario only) through AsyncNotificationListener; no worker loop of its "
               "own: read + archive_batch in a loop")

    async def install(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute(get_embedded_install_sql())
        finally:
            await conn.close()
        client = await _client(dsn)
        try:
            await client.create_queue(QUEUE)
        finally:
            await PgmqProducer(client).close()

    async def producer(self, dsn: str, index: int = 0) -> ProducerLike:
        return PgmqProducer(await _client(dsn))

    async def consumer(self, dsn: str, index: int = 0, *, listen: bool = False,
                       poll_interval: float = 1.0) -> ConsumerLike:
        consumer = PgmqConsumer(await _client(dsn), listening=listen)
        if listen:
            await consumer.start_listening()
        return consumer

    async def prepare(self, dsn: str, *, latency: bool) -> None:
        if latency:
            client = await _client(dsn)
            try:
                await client.enable_notify(QUEUE, throttle_interval_ms=0)
            finally:
                await PgmqProducer(client).close()

    async def preload(self, dsn: str, payloads: Sequence[Payload]) -> None:
        producer = PgmqProducer(await _client(dsn))
        try:
            for start in range(0, len(payloads), 5000):
                await producer.enqueue_batch(payloads[start:start + 5000])
        finally:
            await producer.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    async def archived(self, dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            count: Any = await conn.fetchval(f"SELECT count(*) FROM pgmq.a_{QUEUE}")
            return int(count)
        finally:
            await conn.close()


if __name__ == "__main__":
    serve.main(PgmqSide())
