"""The minimal-design floor: what the least a SKIP LOCKED queue in PostgreSQL can do costs.

The same-SQL floor (``benchmarks.sides.FloorSide``) measures the price of the library on
pgqrs's schema. This one measures the price of the schema: a queue table with nothing
but a primary key, and an archive with nothing but a primary key, exactly as the
performance issue states it::

    minimal_queue   (id bigserial PRIMARY KEY, payload jsonb, vt timestamptz, read_ct int)
    minimal_archive (id bigint PRIMARY KEY, payload jsonb, vt timestamptz, read_ct int,
                     archived_at timestamptz)

claimed with ``UPDATE … WHERE id IN (SELECT id … WHERE vt <= now() ORDER BY id FOR
UPDATE SKIP LOCKED LIMIT n) RETURNING …`` and acknowledged with one ``DELETE …
RETURNING`` feeding an ``INSERT`` into the archive. No queues table, no workers, no
fencing (any client may acknowledge any id), no notification unless the latency
scenario installs one: raw asyncpg, prepared statements, one connection per client,
each statement its own implicit transaction (one round trip). Its worker loop is the
plain claim n / run the handler on each / acknowledge the n loop
(``benchmarks.api.LoopConsumer``); an idle consumer sleeps on LISTEN, woken by a
statement-level ``AFTER INSERT`` trigger (installed for the latency scenario only,
unless ``--floor-notify always``), as the same-SQL floor does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple

import asyncpg

from benchmarks.api import ConsumerLike, LoopConsumer, Payload, ProducerLike, encode

SCHEMA = """
CREATE TABLE minimal_queue (
    id bigserial PRIMARY KEY,
    payload jsonb,
    vt timestamptz DEFAULT now(),
    read_ct int DEFAULT 0
);
CREATE TABLE minimal_archive (
    id bigint PRIMARY KEY,
    payload jsonb,
    vt timestamptz,
    read_ct int,
    archived_at timestamptz DEFAULT now()
);
"""

ENQUEUE = "INSERT INTO minimal_queue (payload) VALUES ($1::jsonb) RETURNING id"
ENQUEUE_BATCH = ("INSERT INTO minimal_queue (payload) "
                 "SELECT p::jsonb FROM unnest($1::text[]) AS p RETURNING id")
CLAIM = """
UPDATE minimal_queue SET vt = now() + $2::interval, read_ct = read_ct + 1
WHERE id IN (SELECT id FROM minimal_queue WHERE vt <= now()
             ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $1)
RETURNING id, read_ct, payload
"""
ACK = """
WITH done AS (DELETE FROM minimal_queue WHERE id = ANY($1::bigint[])
              RETURNING id, payload, vt, read_ct)
INSERT INTO minimal_archive (id, payload, vt, read_ct)
SELECT id, payload, vt, read_ct FROM done RETURNING id
"""

NOTIFY_CHANNEL = "minimal_bench"
NOTIFY_TRIGGER = f"""
CREATE FUNCTION minimal_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('{NOTIFY_CHANNEL}', ''); RETURN NULL; END $$;
CREATE TRIGGER minimal_notify AFTER INSERT ON minimal_queue
FOR EACH STATEMENT EXECUTE FUNCTION minimal_notify();
"""

_LEASE = timedelta(seconds=30)


class MinimalMessage(NamedTuple):
    """A claimed message: id, delivery count and decoded payload."""

    id: int
    read_ct: int
    payload: Payload


class MinimalProducer:
    """``enqueue``/``enqueue_batch``: one prepared INSERT each, one connection."""

    def __init__(self, conn: asyncpg.Connection, one: asyncpg.prepared_stmt.PreparedStatement,
                 many: asyncpg.prepared_stmt.PreparedStatement) -> None:
        self.conn, self._one, self._many = conn, one, many

    @classmethod
    async def open(cls, dsn: str) -> MinimalProducer:
        conn = await asyncpg.connect(dsn)
        return cls(conn, await conn.prepare(ENQUEUE), await conn.prepare(ENQUEUE_BATCH))

    async def enqueue(self, payload: Payload) -> int:
        return int(await self._one.fetchval(encode(payload)))

    async def enqueue_batch(self, payloads: Sequence[Payload]) -> list[int]:
        rows = await self._many.fetch([encode(p) for p in payloads])
        return sorted(r["id"] for r in rows)

    async def close(self) -> None:
        await self.conn.close()


class MinimalConsumer(LoopConsumer):
    """The claim and the acknowledgement as prepared statements; the plain worker loop."""

    def __init__(self, conn: asyncpg.Connection, claim: asyncpg.prepared_stmt.PreparedStatement,
                 ack: asyncpg.prepared_stmt.PreparedStatement, *, listening: bool) -> None:
        super().__init__()
        self.conn, self._claim, self._ack = conn, claim, ack
        self.listening = listening

    @classmethod
    async def open(cls, dsn: str, *, listen: bool) -> MinimalConsumer:
        conn = await asyncpg.connect(dsn)
        self = cls(conn, await conn.prepare(CLAIM), await conn.prepare(ACK), listening=listen)
        if listen:
            await conn.add_listener(NOTIFY_CHANNEL, self.wake)
        return self

    async def dequeue(self, limit: int = 1) -> list[MinimalMessage]:
        rows = await self._claim.fetch(limit, _LEASE)
        return [MinimalMessage(r["id"], r["read_ct"], json.loads(r["payload"])) for r in rows]

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]:
        ids = list(message_ids)
        done = {r["id"] for r in await self._ack.fetch(ids)}
        return [i in done for i in ids]

    async def close(self) -> None:
        await self.conn.close()


async def _sql(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


class MinimalSide:
    """Hand-written asyncpg clients of the minimal design.

    Args:
        notify: as for ``FloorSide``: ``"latency"`` installs the NOTIFY trigger only for
            the latency scenario, ``"always"`` in every run.
    """

    name = "minimal"

    def __init__(self, notify: str = "latency") -> None:
        self.notify = notify
        where = "in every run" if notify == "always" else "for the latency scenario only"
        self.wake_up = ("LISTEN/NOTIFY (an AFTER INSERT ... FOR EACH STATEMENT trigger calls "
                        f"pg_notify; installed {where})")

    @staticmethod
    async def install(dsn: str) -> None:
        """Create the two tables (in the template database)."""
        await _sql(dsn, SCHEMA)

    async def producer(self, dsn: str, index: int = 0) -> ProducerLike:
        return await MinimalProducer.open(dsn)

    async def consumer(self, dsn: str, index: int = 0, *, listen: bool = False,
                       poll_interval: float = 1.0) -> ConsumerLike:
        return await MinimalConsumer.open(dsn, listen=listen)

    async def prepare(self, dsn: str, *, latency: bool) -> None:
        if latency or self.notify == "always":
            await _sql(dsn, NOTIFY_TRIGGER)

    async def preload(self, dsn: str, payloads: Sequence[Payload]) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("INSERT INTO minimal_queue (payload) "
                               "SELECT p::jsonb FROM unnest($1::text[]) AS p",
                               [encode(p) for p in payloads])
            await conn.execute("ANALYZE minimal_queue")
        finally:
            await conn.close()

    async def archived(self, dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM minimal_archive"))
        finally:
            await conn.close()
