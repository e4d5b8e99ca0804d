"""Peel pgqrs's layers off one at a time: client cost of one enqueue / one claim+ack.

Usage (from the repository root)::

    python -m benchmarks.studies.ladder [--calls 3000] [--dsn URL]

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

Every rung runs pgqrs's own statements (``benchmarks/pgqrs_sql.py``): the SQLAlchemy
constructs of ``pgqrs.repositories.messages`` on rungs 2-4, the same compiled to SQL text
on rungs 1 and 5. The enqueue leaves out pgqrs's NOTIFY, as the floor's does.
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
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from benchmarks import pgqrs_sql, scenarios
from benchmarks.server import QUEUE, Databases, default_tmpdir, server
from benchmarks.sides import REGISTER, encode
from pgqrs import Consumer, Producer

SA_ENQUEUE = pgqrs_sql.without_notify(pgqrs_sql.pgqrs_statement("_ENQUEUE"))
SA_DEQUEUE = pgqrs_sql.pgqrs_statement("_DEQUEUE")
SA_ARCHIVE = pgqrs_sql.pgqrs_statement("_ARCHIVE")

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
        result = await run(SA_ENQUEUE, {"p_queue_id": q,
                                        "p_payload": encode(scenarios.payload(next(n))),
                                        "p_delay": timedelta(0), "p_worker_id": w,
                                        "p_priority": 0, "p_headers": None})
        return result.scalar_one()

    async def cycle() -> object:
        rows = [r for r in await run(SA_DEQUEUE, {
            "p_queue_id": q, "p_worker_id": w, "p_limit": 1, "p_max_read_ct": 5,
            "p_lease": _LEASE})]
        result = await run(SA_ARCHIVE, {"p_ids": [r.id for r in rows], "p_worker_id": w,
                                        "p_read_cts": [r.read_ct for r in rows]})
        return list(result.scalars())

    return enqueue, cycle


async def _asyncpg_calls(conn: asyncpg.Connection, q: int, w: int) -> tuple[Call, Call]:
    statements = (pgqrs_sql.enqueue(), pgqrs_sql.claim(), pgqrs_sql.archive())
    enq, deq, arc = [await conn.prepare(s.sql) for s in statements]
    enq_args = statements[0].binder("p_payload", p_queue_id=q, p_delay=timedelta(0),
                                    p_worker_id=w, p_priority=0, p_headers=None)
    deq_args = statements[1].binder("p_limit", p_queue_id=q, p_max_read_ct=5, p_worker_id=w,
                                    p_lease=_LEASE)
    arc_args = statements[2].binder("p_ids", p_worker_id=w, p_read_cts=[1])
    read_cts_at = statements[2].names.index("p_read_cts")
    n = iter(range(10**9))

    async def enqueue() -> object:
        return await enq.fetchval(*enq_args(encode(scenarios.payload(next(n)))))

    async def cycle() -> object:
        rows = await deq.fetch(*deq_args(1))
        # SQLAlchemy's pool connections decode jsonb already (its codec); plain ones don't.
        _ = [p if isinstance(p := r["payload"], dict) else json.loads(p) for r in rows]
        args = arc_args([r["id"] for r in rows])
        args[read_cts_at] = [r["read_ct"] for r in rows]
        return await arc.fetch(*args)

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
    """Entry point of ``python -m benchmarks.studies.ladder``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.ladder",
                                     description=__doc__,
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
