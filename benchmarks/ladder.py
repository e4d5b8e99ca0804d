"""Peel pgqrs's layers off one at a time: client cost of one enqueue / one claim+ack.

Usage (from the repository root)::

    python -m benchmarks.ladder [--calls 3000] [--dsn URL]

Every rung runs the same statements on the same server (a fresh database each), one
client, ``calls`` times after a warm-up, and prints wall and client-CPU microseconds per
call. Going down the ladder adds one layer, so the difference between two rungs is what
that layer costs:

1. asyncpg prepared statement (the floor)
2. SQLAlchemy Core ``AsyncConnection.execute`` on one connection held open (autocommit)
3. + ``schema_translate_map`` (pgqrs maps ``None`` to its schema on every statement)
4. + a pool checkout/checkin per call (``async with engine.connect()``, autocommit view)
5. the SQLAlchemy asyncpg adapter bypassed: the pooled connection's asyncpg driver
   connection with a prepared statement (what a hot path could do inside SQLAlchemy's pool)
6. pgqrs itself (``Producer.enqueue`` / ``Consumer.dequeue`` + ``archive_batch``)

The SQLAlchemy statements are built here from ``pgqrs.models`` in the shape pgqrs uses,
not imported from pgqrs's private modules, so this keeps working while pgqrs changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy import ARRAY, BigInteger, Interval, bindparam, func, insert, literal_column, select
from sqlalchemy import delete as sa_delete
from sqlalchemy import update as sa_update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from benchmarks import scenarios
from benchmarks.server import QUEUE, Databases, default_tmpdir, server
from benchmarks.sides import ARCHIVE, DEQUEUE, ENQUEUE, REGISTER, encode
from pgqrs import Consumer, Producer
from pgqrs.models import archive_table, messages_table, workers_table

_m, _a, _w = messages_table, archive_table, workers_table
_NOW = func.now()

SA_ENQUEUE = insert(_m).values(
    queue_id=bindparam("q", type_=BigInteger), payload=bindparam("p"),
    vt=_NOW + bindparam("d", type_=Interval), producer_worker_id=bindparam("w", type_=BigInteger),
).returning(_m.c.id)

_claim = (
    select(_m.c.id)
    .where(_m.c.queue_id == bindparam("q", type_=BigInteger), _m.c.vt <= _NOW,
           _m.c.read_ct < bindparam("max_read_ct"),
           select(_w.c.id).where(_w.c.id == bindparam("w", type_=BigInteger),
                                 _w.c.status == "ready").exists())
    .order_by(_m.c.id).limit(bindparam("limit")).with_for_update(skip_locked=True).cte("claim")
)
SA_DEQUEUE = (
    sa_update(_m).where(_m.c.id == _claim.c.id)
    .values(vt=_NOW + bindparam("lease", type_=Interval), read_ct=_m.c.read_ct + 1,
            dequeued_at=_NOW, consumer_worker_id=bindparam("w", type_=BigInteger))
    .returning(*_m.c)
)
_moved = (sa_delete(_m)
          .where(_m.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger))),
                 _m.c.consumer_worker_id == bindparam("w", type_=BigInteger))
          .returning(*_m.c).cte("moved"))
SA_ARCHIVE = insert(_a).from_select(
    ["original_msg_id", "queue_id", "payload", "enqueued_at", "vt", "read_ct", "dequeued_at",
     "producer_worker_id", "consumer_worker_id", "dead_letter"],
    select(_moved.c.id, _moved.c.queue_id, _moved.c.payload, _moved.c.enqueued_at,
           _moved.c.vt, _moved.c.read_ct, _moved.c.dequeued_at, _moved.c.producer_worker_id,
           _moved.c.consumer_worker_id, literal_column("false")),
).returning(_a.c.original_msg_id)

Call = Callable[[], Awaitable[object]]
_LEASE = timedelta(seconds=30)
_TRANSLATE = {"schema_translate_map": {None: "public"}}


async def _ids(dsn: str, hostname: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        queue_id = await conn.fetchval("SELECT id FROM pgqrs_queues WHERE queue_name = $1",
                                       QUEUE)
        worker_id = await conn.fetchval(REGISTER, hostname, 1, queue_id)
        return int(queue_id), int(worker_id)
    finally:
        await conn.close()


def _sa_calls(run: Callable[[Any, dict[str, Any]], Awaitable[Any]], q: int, w: int
              ) -> tuple[Call, Call]:
    """(enqueue, claim+ack) through ``run(statement, params)``."""
    n = iter(range(10**9))

    async def enqueue() -> object:
        result = await run(SA_ENQUEUE, {"q": q, "p": scenarios.payload(next(n)),
                                        "d": timedelta(0), "w": w})
        return result.scalar_one()

    async def cycle() -> object:
        rows = [r for r in await run(SA_DEQUEUE, {"q": q, "w": w, "limit": 1,
                                                  "max_read_ct": 5, "lease": _LEASE})]
        result = await run(SA_ARCHIVE, {"ids": [r.id for r in rows], "w": w})
        return list(result.scalars())

    return enqueue, cycle


async def _asyncpg_calls(conn: asyncpg.Connection, q: int, w: int) -> tuple[Call, Call]:
    enq, deq, arc = [await conn.prepare(s) for s in (ENQUEUE, DEQUEUE, ARCHIVE)]
    n = iter(range(10**9))

    async def enqueue() -> object:
        return await enq.fetchval(q, encode(scenarios.payload(next(n))), timedelta(0), w)

    async def cycle() -> object:
        rows = await deq.fetch(q, 5, w, 1, _LEASE)
        # SQLAlchemy's pool connections decode jsonb already (its codec); plain ones don't.
        _ = [r[2] if isinstance(r[2], dict) else json.loads(r[2]) for r in rows]
        return await arc.fetch([r[0] for r in rows], w)

    return enqueue, cycle


async def _measure(call: Call, calls: int) -> tuple[float, float]:
    for _ in range(50):
        await call()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await call()
    return ((time.perf_counter() - t0) / calls * 1e6, (time.process_time() - c0) / calls * 1e6)


def _engine(dsn: str) -> AsyncEngine:
    return create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                               pool_size=5)


async def rung(number: int, dsn: str, calls: int) -> tuple[str, list[tuple[float, float]]]:
    """Run rung ``number`` on a fresh database; (label, [(wall, cpu) enqueue, cycle])."""
    await scenarios.preload(dsn, calls + 100)
    q, w = await _ids(dsn, f"ladder-{number}")
    cleanup: list[Callable[[], Awaitable[object]]] = []
    try:
        if number == 1:
            label = "asyncpg prepared statements (floor)"
            conn = await asyncpg.connect(dsn)
            cleanup.append(conn.close)
            enqueue, cycle = await _asyncpg_calls(conn, q, w)
        elif number in (2, 3):
            engine = _engine(dsn)
            cleanup.append(engine.dispose)
            held: AsyncConnection = await engine.connect()
            held = await held.execution_options(isolation_level="AUTOCOMMIT")
            cleanup.insert(0, held.close)
            options = _TRANSLATE if number == 3 else {}
            label = ("SQLAlchemy Core, one connection held open" if number == 2
                     else "  + schema_translate_map")

            async def run_held(stmt: Any, params: dict[str, Any]) -> Any:
                return await held.execute(stmt, params, execution_options=options)

            enqueue, cycle = _sa_calls(run_held, q, w)
        elif number == 4:
            engine = _engine(dsn)
            cleanup.append(engine.dispose)
            autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
            label = "  + pool checkout/checkin per call"

            async def run_pooled(stmt: Any, params: dict[str, Any]) -> Any:
                async with autocommit.connect() as conn:
                    result = await conn.execute(stmt, params, execution_options=_TRANSLATE)
                    return result.freeze()()

            enqueue, cycle = _sa_calls(run_pooled, q, w)
        elif number == 5:
            engine = _engine(dsn)
            cleanup.append(engine.dispose)
            label = "SQLAlchemy pool, asyncpg driver connection, prepared statements"
            sa_conn = await engine.connect()
            cleanup.insert(0, sa_conn.close)
            raw = await sa_conn.get_raw_connection()
            enqueue, cycle = await _asyncpg_calls(raw.driver_connection, q, w)
        else:
            label = "pgqrs Producer.enqueue / Consumer.dequeue + archive_batch"
            producer = Producer(dsn, QUEUE, "ladder-p", 9)
            consumer = Consumer(dsn, QUEUE, "ladder-c", 9)
            cleanup += [producer.close, consumer.close]
            n = iter(range(10**9))

            async def enqueue() -> object:
                return await producer.enqueue(scenarios.payload(next(n)))

            async def cycle() -> object:
                (message,) = await consumer.dequeue(1)
                return await consumer.archive_batch([message.id])

        return label, [await _measure(enqueue, calls), await _measure(cycle, calls)]
    finally:
        for close in cleanup:
            await close()


async def _run(dsn: str, calls: int, rungs: Sequence[int], repeats: int) -> None:
    dbs = Databases(dsn)
    await dbs.create_template()
    try:
        table: dict[int, tuple[str, list[list[tuple[float, float]]]]] = {}
        for _ in range(repeats):
            for number in rungs:
                async with dbs.fresh() as db:
                    label, figures = await rung(number, db, calls)
                table.setdefault(number, (label, []))[1].append(figures)
    finally:
        await dbs.drop_template()
    print(f"\n| # | layer | enqueue wall µs | enqueue CPU µs | claim+ack wall µs "
          f"| claim+ack CPU µs |  (median of {repeats}, {calls} calls each)")
    print("|--:|---|--:|--:|--:|--:|")
    for number, (label, runs) in table.items():
        def med(i: int, j: int, runs: list[list[tuple[float, float]]] = runs) -> float:
            values = sorted(r[i][j] for r in runs)
            return values[len(values) // 2]
        print(f"| {number} | {label} | {med(0, 0):.0f} | {med(0, 1):.0f} | {med(1, 0):.0f} "
              f"| {med(1, 1):.0f} |")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.ladder``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ladder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rungs", default="1,2,3,4,5,6")
    parser.add_argument("--dsn", default=os.environ.get("PGQRS_DSN"))
    parser.add_argument("--pg-tmpdir", default=default_tmpdir(),
                        help="data directory root of the throw-away server")
    args = parser.parse_args(argv)
    rungs = [int(r) for r in args.rungs.split(",")]
    with server(args.dsn, tmpdir=args.pg_tmpdir) as pg:
        print(f"# pgqrs layer ladder ({pg.description})")
        asyncio.run(_run(pg.dsn, args.calls, rungs, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
