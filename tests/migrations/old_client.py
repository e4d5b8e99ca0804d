"""A pgqrs 0.1 client in one process, for the upgrade-under-load test.

It speaks revision pgqrs_0001's schema with the statements pgqrs 0.1 sent (copied here as
SQL: the current code reads the policy columns, which do not exist before the upgrade), one
autocommit statement per call, as pgqrs's fast path does. Every call is timed.

Usage: python old_client.py producer|consumer DSN WORKER_ID OUT_JSON DONE_FILE [COUNT]

A producer enqueues COUNT messages in batches, then exits. A consumer claims, "works"
briefly and archives, until DONE_FILE exists and the queue is empty. Either writes
``{"calls": [[start, seconds, op], ...], "ids": [...], "errors": [...]}`` to OUT_JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import asyncpg

ENQUEUE_BATCH = """
WITH changed AS (
  INSERT INTO public.pgqrs_messages (queue_id, payload, vt, producer_worker_id)
  SELECT $1::BIGINT, CAST(p.payload AS JSONB), now() + $2::INTERVAL, $3::BIGINT
  FROM unnest($4::TEXT[]) WITH ORDINALITY AS p(payload, ord) ORDER BY p.ord
  RETURNING public.pgqrs_messages.id, public.pgqrs_messages.queue_id)
SELECT changed.id, pg_notify($5::VARCHAR, CAST(changed.queue_id AS TEXT)) AS notified
FROM changed
"""

CLAIM = """
WITH claim AS (
  SELECT public.pgqrs_messages.id AS id FROM public.pgqrs_messages
  WHERE public.pgqrs_messages.queue_id = $1::BIGINT AND public.pgqrs_messages.vt <= now()
    AND public.pgqrs_messages.read_ct < $2::INTEGER
    AND (EXISTS (SELECT public.pgqrs_workers.id FROM public.pgqrs_workers
                 WHERE public.pgqrs_workers.id = $3::BIGINT
                   AND public.pgqrs_workers.status = 'ready'))
  ORDER BY public.pgqrs_messages.id LIMIT $4 FOR UPDATE SKIP LOCKED)
UPDATE public.pgqrs_messages SET vt = (now() + $5::INTERVAL),
  read_ct = (public.pgqrs_messages.read_ct + 1), dequeued_at = now(),
  consumer_worker_id = $3::BIGINT
FROM claim WHERE public.pgqrs_messages.id = claim.id
RETURNING public.pgqrs_messages.id, public.pgqrs_messages.payload
"""

ARCHIVE = """
WITH moved AS (
  DELETE FROM public.pgqrs_messages
  WHERE public.pgqrs_messages.id = ANY ($1::BIGINT[])
    AND public.pgqrs_messages.consumer_worker_id = $2::BIGINT
  RETURNING public.pgqrs_messages.id, public.pgqrs_messages.queue_id,
    public.pgqrs_messages.payload, public.pgqrs_messages.vt,
    public.pgqrs_messages.enqueued_at, public.pgqrs_messages.read_ct,
    public.pgqrs_messages.dequeued_at, public.pgqrs_messages.producer_worker_id,
    public.pgqrs_messages.consumer_worker_id)
INSERT INTO public.pgqrs_archive (original_msg_id, queue_id, payload, enqueued_at, vt,
  read_ct, dequeued_at, producer_worker_id, consumer_worker_id, dead_letter)
SELECT moved.id, moved.queue_id, moved.payload, moved.enqueued_at, moved.vt, moved.read_ct,
  moved.dequeued_at, moved.producer_worker_id, moved.consumer_worker_id, false
FROM moved RETURNING public.pgqrs_archive.original_msg_id
"""

QUEUE_ID = 1
BATCH = 20
LEASE = timedelta(seconds=30)


class Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[float, float, str]] = []
        self.errors: list[str] = []

    async def run(self, op: str, conn: asyncpg.Connection, sql: str, *args: object) -> list:
        start, clock = time.time(), time.perf_counter()
        try:
            return await conn.fetch(sql, *args)
        except Exception as exc:  # every failure is a finding: the test asserts none
            self.errors.append(f"{op}: {type(exc).__name__}: {exc}")
            return []
        finally:
            self.calls.append((start, time.perf_counter() - clock, op))


async def produce(conn: asyncpg.Connection, worker_id: int, count: int, calls: Calls) -> list:
    ids: list[int] = []
    for start in range(0, count, BATCH):
        payloads = [json.dumps({"w": worker_id, "i": i})
                    for i in range(start, min(start + BATCH, count))]
        rows = await calls.run("enqueue", conn, ENQUEUE_BATCH, QUEUE_ID, timedelta(0),
                               worker_id, payloads, "pgqrs_public")
        ids.extend(r["id"] for r in rows)
        await asyncio.sleep(0.01)
    return ids


async def consume(conn: asyncpg.Connection, worker_id: int, done: Path, calls: Calls) -> list:
    archived: list[int] = []
    while True:
        rows = await calls.run("claim", conn, CLAIM, QUEUE_ID, 5, worker_id, 10, LEASE)
        if not rows:
            if done.exists():
                return archived
            await asyncio.sleep(0.02)
            continue
        await asyncio.sleep(0.02)  # the work: slower than the producers, so a backlog grows
        moved = await calls.run("archive", conn, ARCHIVE, [r["id"] for r in rows], worker_id)
        archived.extend(r["original_msg_id"] for r in moved)


async def main() -> None:
    role, dsn, worker, out, done = sys.argv[1:6]
    count = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    calls = Calls()
    conn = await asyncpg.connect(dsn)
    try:
        if role == "producer":
            ids = await produce(conn, int(worker), count, calls)
        else:
            ids = await consume(conn, int(worker), Path(done), calls)
    finally:
        await conn.close()
    Path(out).write_text(json.dumps({"calls": calls.calls, "ids": ids,
                                     "errors": calls.errors}))


if __name__ == "__main__":
    asyncio.run(main())
