"""What re-planning costs pgqrs's hot statements: custom plans vs ``force_generic_plan``.

Usage (from the repository root)::

    python -m benchmarks.studies.plan_cache [--calls 2000] [--block 100] [--explain]
        [--dsn URL] [--pg-tmpdir /dev/shm] [--no-durable]

For each hot statement (the claim of 1 and of 50, the fused archive-and-claim of 1 and
50, the archive of 1 and 50, the enqueue of 1 and of 100, NEXT_DUE), on one asyncpg
connection, the statement is prepared once (as pgqrs's fast path does: asyncpg's
statement cache) and executed ``calls`` times under each ``plan_cache_mode``, ``auto``
(PostgreSQL's default) and ``force_generic_plan``, in alternating blocks of ``block``
calls so that the machine's noise falls on both alike. The setting is read at every
execution of a prepared statement, so switching it between blocks on one connection is
enough. What a statement needs first (claimed messages to archive) is done untimed.

It prints, per statement and mode, the mean and median round trip (ms) and, from
``pg_prepared_statements`` (PostgreSQL 14+), how many generic and custom plans the server
made under ``auto``: ``custom`` equal to the calls means the statement was planned anew
on every call. ``--explain`` adds the planning and execution time of one
``EXPLAIN (ANALYZE, SUMMARY)`` of each statement with a custom plan. Not a test and not
timed in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg

from benchmarks import pgqrs_sql, scenarios
from benchmarks.server import QUEUE, Databases, server
from pgqrs import Consumer
from pgqrs.settings import Settings

MODES = ("auto", "force_generic_plan")
_LEASE = timedelta(seconds=30)


class Bench:
    """One connection, a worker that may claim, and the statements prepared on it."""

    def __init__(self, conn: asyncpg.Connection, queue_id: int, worker_id: int) -> None:
        self.conn, self.queue_id, self.worker_id = conn, queue_id, worker_id
        self.prepared: dict[str, asyncpg.prepared_stmt.PreparedStatement] = {}
        self.held: list[tuple[int, int]] = []  # (id, read_ct) claimed, not yet acked
        self.last_args: list[Any] = []  # what the last set-up bound (for EXPLAIN)

    async def stmt(self, name: str) -> asyncpg.prepared_stmt.PreparedStatement:
        if name not in self.prepared:
            self.prepared[name] = await self.conn.prepare(pgqrs_sql.compiled(name).sql)
        return self.prepared[name]

    def args(self, name: str, **params: Any) -> list[Any]:
        fixed = {"p_queue_id": self.queue_id, "p_worker_id": self.worker_id,
                 "p_lease": _LEASE, "p_delay": timedelta(0), "p_priority": 0,
                 "p_headers": None, "p_channel": f"pgqrs_{Settings.build().schema}"}
        self.last_args = pgqrs_sql.compiled(name).args(**{**fixed, **params})
        return self.last_args

    async def claim(self, limit: int) -> None:
        rows = await (await self.stmt("_DEQUEUE")).fetch(*self.args("_DEQUEUE", p_limit=limit))
        self.held += [(r["id"], r["read_ct"]) for r in rows]

    async def take(self, count: int) -> tuple[list[int], list[int]]:
        """``count`` claimed deliveries (ids, read_cts), claiming more first if need be."""
        while len(self.held) < count:
            held = len(self.held)
            await self.claim(max(count, 50))
            if len(self.held) == held:
                raise RuntimeError("the queue ran dry: raise --messages")
        taken, self.held = self.held[:count], self.held[count:]
        return [i for i, _ in taken], [c for _, c in taken]


Call = Callable[[Bench], Awaitable[Callable[[], Awaitable[Any]]]]
"""Untimed set-up for one call; returns the timed call."""


def claim(limit: int) -> Call:
    async def setup(b: Bench) -> Callable[[], Awaitable[Any]]:
        s, args = await b.stmt("_DEQUEUE"), b.args("_DEQUEUE", p_limit=limit)
        return lambda: s.fetch(*args)
    return setup


def archive(count: int) -> Call:
    async def setup(b: Bench) -> Callable[[], Awaitable[Any]]:
        ids, cts = await b.take(count)
        s = await b.stmt("_ARCHIVE")
        args = b.args("_ARCHIVE", p_ids=ids, p_read_cts=cts)
        return lambda: s.fetch(*args)
    return setup


def fused(count: int) -> Call:
    async def setup(b: Bench) -> Callable[[], Awaitable[Any]]:
        ids, cts = await b.take(count)
        s = await b.stmt("_ARCHIVE_AND_DEQUEUE")
        args = b.args("_ARCHIVE_AND_DEQUEUE", p_ids=ids, p_read_cts=cts, p_limit=count)

        async def call() -> None:
            rows = await s.fetch(*args)
            b.held += [(r["id"], r["read_ct"]) for r in rows if r["id"] is not None]
        return call
    return setup


def enqueue(count: int) -> Call:
    name = "_ENQUEUE" if count == 1 else "_ENQUEUE_BATCH"
    texts = [scenarios.encode(scenarios.payload(i)) for i in range(count)]

    async def setup(b: Bench) -> Callable[[], Awaitable[Any]]:
        s = await b.stmt(name)
        args = (b.args(name, p_payload=texts[0]) if count == 1
                else b.args(name, p_payloads=texts))
        return lambda: s.fetch(*args)
    return setup


def next_due() -> Call:
    async def setup(b: Bench) -> Callable[[], Awaitable[Any]]:
        s, args = await b.stmt("_NEXT_DUE"), b.args("_NEXT_DUE")
        return lambda: s.fetch(*args)
    return setup


CALLS: dict[str, tuple[str, Call]] = {
    # label: (statement, call)
    "claim 1": ("_DEQUEUE", claim(1)),
    "claim 50": ("_DEQUEUE", claim(50)),
    "archive+claim 1": ("_ARCHIVE_AND_DEQUEUE", fused(1)),
    "archive+claim 50": ("_ARCHIVE_AND_DEQUEUE", fused(50)),
    "archive 1": ("_ARCHIVE", archive(1)),
    "archive 50": ("_ARCHIVE", archive(50)),
    "enqueue 1": ("_ENQUEUE", enqueue(1)),
    "enqueue 100": ("_ENQUEUE_BATCH", enqueue(100)),
    "next_due": ("_NEXT_DUE", next_due()),
}


_PORTS = itertools.count(1)


async def _open(dsn: str) -> Bench:
    async with Consumer(dsn, QUEUE, "plan-cache", next(_PORTS)) as consumer:
        worker_id = await consumer.register()
    conn = await asyncpg.connect(dsn)
    await conn.execute("UPDATE pgqrs_workers SET status = 'ready'")
    queue_id = await conn.fetchval("SELECT id FROM pgqrs_queues WHERE queue_name = $1", QUEUE)
    return Bench(conn, int(queue_id), worker_id)


async def _plans(b: Bench, name: str) -> tuple[int, int]:
    row = await b.conn.fetchrow(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
        pgqrs_sql.compiled(name).sql)
    return (int(row[0]), int(row[1])) if row else (-1, -1)


async def _explain(b: Bench, label: str) -> tuple[float, float]:
    name, call = CALLS[label]
    await call(b)  # the set-up only: binds the arguments (and claims what an ack needs)
    sql = pgqrs_sql.compiled(name).sql
    transaction = b.conn.transaction()
    await transaction.start()
    try:
        plan = json.loads(await b.conn.fetchval(
            f"EXPLAIN (ANALYZE, SUMMARY, FORMAT JSON) {sql}", *b.last_args))[0]
    finally:
        await transaction.rollback()
    return plan["Planning Time"], plan["Execution Time"]


async def measure(dsn: str, label: str, *, calls: int, block: int) -> dict[str, Any]:
    name, call = CALLS[label]
    b = await _open(dsn)
    try:
        times: dict[str, list[float]] = {m: [] for m in MODES}
        plans = (0, 0)
        for _ in range(20):  # prepare; let ``auto`` settle past its first 5 custom plans
            await (await call(b))()
        for r in range(calls // block):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                await b.conn.execute(f"SET plan_cache_mode = {mode}")
                before = await _plans(b, name)
                for _ in range(block):
                    run = await call(b)
                    t0 = time.perf_counter()
                    await run()
                    times[mode].append(time.perf_counter() - t0)
                if mode == "auto":
                    after = await _plans(b, name)
                    plans = (plans[0] + after[0] - before[0], plans[1] + after[1] - before[1])
        return {"label": label, "plans": plans,
                **{m: (statistics.mean(t) * 1e3, statistics.median(t) * 1e3)
                   for m, t in times.items()}}
    finally:
        await b.conn.close()


async def study(dsn: str, *, calls: int, block: int, only: list[str], explain: bool,
                messages: int) -> None:
    databases = Databases(dsn)
    await databases.create_template()
    try:
        print(f"{'statement':<18} {'auto mean/p50 ms':>18} {'generic mean/p50 ms':>20} "
              f"{'generic/auto':>12} {'auto plans g/c':>15}")
        for label in only:
            async with databases.fresh() as fresh:
                await scenarios.preload(fresh, messages)
                if explain:
                    b = await _open(fresh)
                    try:
                        planning, execution = await _explain(b, label)
                    finally:
                        await b.conn.close()
                r = await measure(fresh, label, calls=calls, block=block)
            auto, generic = r["auto"], r["force_generic_plan"]
            line = (f"{label:<18} {auto[0]:>8.3f} / {auto[1]:.3f} {generic[0]:>10.3f} / "
                    f"{generic[1]:.3f} {generic[1] / auto[1]:>12.2f} "
                    f"{r['plans'][0]:>7} / {r['plans'][1]}")
            if explain:
                line += f"   EXPLAIN planning {planning:.3f} ms, execution {execution:.3f} ms"
            print(line, flush=True)
    finally:
        await databases.drop_template()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--messages", type=int, default=250_000)
    parser.add_argument("--only", default=",".join(CALLS))
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--dsn")
    parser.add_argument("--pg-tmpdir")
    parser.add_argument("--no-durable", action="store_true")
    args = parser.parse_args()
    with server(args.dsn, durable=not args.no_durable, tmpdir=args.pg_tmpdir) as srv:
        print(srv.description, flush=True)
        asyncio.run(study(srv.dsn, calls=args.calls, block=args.block,
                          only=args.only.split(","), explain=args.explain,
                          messages=args.messages))


if __name__ == "__main__":
    main()
