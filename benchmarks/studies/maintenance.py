"""Maintenance figures: a 10M-row archive, purging under load, the hot table under churn.

Usage (from the repository root)::

    python -m benchmarks.studies.maintenance archive [--rows 10000000]
    python -m benchmarks.studies.maintenance purge [--rows 1000000]
    python -m benchmarks.studies.maintenance churn [--messages 1000000] [--storage both]
    [--dsn URL] [--pg-tmpdir DIR] [--no-durable]   (any of them)

- ``archive``: median and p99 of enqueue, claim+ack (dequeue 1, archive 1),
  ``Admin.queue_metrics`` and ``Admin.system_stats`` with an empty archive, then again
  after ``INSERT ... SELECT generate_series`` put ``rows`` rows into the archive of the same
  queue (``VACUUM ANALYZE`` after, as autovacuum would); also the exact ``count(*)`` that
  ``system_stats`` used before (what it would cost now).
- ``purge``: ``rows`` archived rows older than 7 days are purged with
  ``Admin.purge_archive`` while 4 consumer processes drain a 200,000-message queue (claim
  20, archive); every consumer call is timed.
- ``churn``: ``messages`` flow through the queue (one producer process, ``enqueue_batch``
  of 500, paced to the consumers; 4 consumer processes, claim 50 + archive); the size of
  ``pgqrs_messages`` and its indexes (``pg_total_relation_size``) is sampled, and the
  claim rate of a 20,000-message drain is measured before and after. ``--storage both``
  runs it with the storage settings of revision pgqrs_0003 and with PostgreSQL's defaults.

Not a test and not timed in CI; figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from benchmarks.server import QUEUE, Databases, server
from pgqrs import Admin, Consumer, Producer

_SIZE = """SELECT pg_total_relation_size('pgqrs_messages') AS total,
       pg_relation_size('pgqrs_messages') AS heap,
       pg_indexes_size('pgqrs_messages') AS indexes,
       (SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'pgqrs_messages') AS upd,
       (SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'pgqrs_messages') AS hot,
       (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'pgqrs_messages')
           AS autovacuums"""


async def _timed(n: int, call: Callable[[], Awaitable[object]]) -> dict[str, float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return {"p50_ms": round(statistics.median(times) * 1000, 3),
            "p99_ms": round(statistics.quantiles(times, n=100)[98] * 1000, 3)}


async def _costs(dsn: str, n: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    async with Admin(dsn) as admin, Producer(dsn, QUEUE, "bench-p", 1) as producer, \
            Consumer(dsn, QUEUE, "bench-c", 2) as consumer:
        await producer.enqueue({"warm": 1})
        out["enqueue"] = await _timed(n, lambda: producer.enqueue({"n": 1, "pad": "x" * 80}))

        async def claim_ack() -> None:
            (message,) = await consumer.dequeue(1)
            await consumer.archive(message.id)

        out["claim+ack"] = await _timed(n, claim_ack)
        out["queue_metrics"] = await _timed(max(n // 10, 50),
                                            lambda: admin.queue_metrics(QUEUE))
        out["system_stats"] = await _timed(max(n // 10, 50), admin.system_stats)
    return out


async def _fill_archive(dsn: str, rows: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        start = time.perf_counter()
        await conn.execute(f"""INSERT INTO pgqrs_archive (original_msg_id, queue_id, payload,
            enqueued_at, vt, read_ct, archived_at, dequeued_at, producer_worker_id,
            consumer_worker_id)
            SELECT i, 1, '{{"n": 1, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}',
                   now() - interval '30 days', now() - interval '30 days', 1,
                   now() - interval '30 days' + i * interval '100 ms',
                   now() - interval '30 days', 1, 2
            FROM generate_series(1, {rows}) i""")
        generated = time.perf_counter() - start
        await conn.execute("VACUUM ANALYZE pgqrs_archive")
        # Flush the ~3 GB of WAL's dirty pages now, not during the measurements.
        await conn.execute("CHECKPOINT")
        start = time.perf_counter()
        exact = await conn.fetchval("SELECT count(*) FROM pgqrs_archive")
        exact_ms = (time.perf_counter() - start) * 1000
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size("
                                   "'pgqrs_archive'))")
    finally:
        await conn.close()
    return {"rows": exact, "archive_size": size, "generate_s": round(generated, 1),
            "exact_count_ms": round(exact_ms, 1)}


async def archive(empty_dsn: str, full_dsn: str, rows: int, n: int,
                  rounds: int) -> dict[str, Any]:
    """Alternate rounds on an empty-archive and a full-archive database (drift cancels)."""
    filled = await _fill_archive(full_dsn, rows)
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"empty": [], "full": []}
    order = [("empty", empty_dsn), ("full", full_dsn)]
    for _ in range(rounds):
        for name, dsn in order:
            runs[name].append(await _costs(dsn, n))
        order.reverse()  # each goes first in every other round
    medians = {name: {op: {k: round(statistics.median(r[op][k] for r in rs), 3)
                           for k in ("p50_ms", "p99_ms")} for op in rs[0]}
               for name, rs in runs.items()}
    ratios = {op: round(medians["full"][op]["p50_ms"] / medians["empty"][op]["p50_ms"], 2)
              for op in medians["empty"]}
    return {**filled, "calls_per_round": n, "rounds": rounds, **medians,
            "p50_ratio_full_over_empty": ratios}


def _drain(dsn: str, port: int, stop: Any, out: Any, batch: int) -> None:
    """A consumer process: claim ``batch``, archive, timing every call, until ``stop``."""
    async def run() -> None:
        calls: list[tuple[float, float]] = []
        async with Consumer(dsn, QUEUE, "drain", port, visibility_timeout=60) as consumer:
            while not stop.is_set():
                start = time.time()
                messages = await consumer.dequeue(batch)
                calls.append((start, time.time() - start))
                if not messages:
                    await asyncio.sleep(0.01)
                    continue
                start = time.time()
                await consumer.archive_batch([m.id for m in messages])
                calls.append((start, time.time() - start))
        out.put(calls)

    asyncio.run(run())


def _produce(dsn: str, total: int, backlog: int) -> None:
    """A producer process: ``enqueue_batch`` of 500 until ``total``, keeping the backlog
    of live messages under ``backlog`` (paced to the consumers)."""
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        async with Producer(dsn, QUEUE, "churn-p", 3) as producer:
            for sent in range(0, total, 500):
                await producer.enqueue_batch([{"n": sent + i} for i in range(500)])
                while sent % 5000 == 0 and await conn.fetchval(
                        "SELECT count(*) FROM pgqrs_messages") > backlog:
                    await asyncio.sleep(0.05)
        await conn.close()

    asyncio.run(run())


class _Consumers:
    def __init__(self, dsn: str, n: int, batch: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop, self.out = ctx.Event(), ctx.Queue()
        self.procs = [ctx.Process(target=_drain, args=(dsn, 10 + i, self.stop, self.out,
                                                       batch)) for i in range(n)]
        for proc in self.procs:
            proc.start()

    def finish(self) -> list[tuple[float, float]]:
        self.stop.set()
        calls = [c for _ in self.procs for c in self.out.get(timeout=60)]
        for proc in self.procs:
            proc.join(timeout=30)
        return calls


async def purge(dsn: str, rows: int) -> dict[str, Any]:
    async with Producer(dsn, QUEUE, "bench-p", 1) as producer:
        for _ in range(400):
            await producer.enqueue_batch([{"n": i} for i in range(1000)])
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"""INSERT INTO pgqrs_archive (original_msg_id, queue_id, payload,
            enqueued_at, read_ct, archived_at)
            SELECT -i, 1, '{{"old": true}}', now() - interval '30 days', 1,
                   now() - interval '30 days' + i * interval '1 ms'
            FROM generate_series(1, {rows}) i""")
        await conn.execute("VACUUM ANALYZE pgqrs_archive")
    finally:
        await conn.close()
    consumers = _Consumers(dsn, 4, 20)
    await asyncio.sleep(3)
    batches: list[float] = []
    async with Admin(dsn) as admin:
        started = time.time()
        purged = await admin.purge_archive(older_than=7 * 86400,
                                           on_batch=lambda _: batches.append(time.time()))
        ended = time.time()
    calls = consumers.finish()
    during = sorted(s for start, s in calls if start <= ended and start + s >= started)
    before = sorted(s for start, s in calls if start + s < started)
    gaps = [b - a for a, b in zip([started, *batches], batches, strict=False)]
    left = await asyncpg.connect(dsn)
    try:
        old = await left.fetchval("SELECT count(*) FROM pgqrs_archive WHERE original_msg_id < 0")
    finally:
        await left.close()
    return {"purged": purged, "old_rows_left": old, "seconds": round(ended - started, 1),
            "rows_per_s": round(purged / (ended - started)), "batches": len(batches),
            "max_batch_s": round(max(gaps), 3), "consumer_calls_during": len(during),
            "consumer_call_max_ms": round(during[-1] * 1000, 1),
            "consumer_call_p99_ms": round(statistics.quantiles(during, n=100)[98] * 1000, 2),
            "consumer_call_p50_ms": round(statistics.median(during) * 1000, 2),
            "consumer_call_p50_ms_before": round(statistics.median(before) * 1000, 2)}


async def _claim_rate(dsn: str, n: int = 20_000) -> float:
    async with Producer(dsn, QUEUE, "rate-p", 4) as producer:
        for _ in range(n // 1000):
            await producer.enqueue_batch([{"n": i} for i in range(1000)])
    async with Consumer(dsn, QUEUE, "rate-c", 5) as consumer:
        start, done = time.perf_counter(), 0
        while done < n:
            messages = await consumer.dequeue(50)
            if not messages:
                break
            await consumer.archive_batch([m.id for m in messages])
            done += len(messages)
        return round(done / (time.perf_counter() - start))


async def churn(dsn: str, messages: int, storage: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        if storage == "default":
            await conn.execute("ALTER TABLE pgqrs_messages RESET (fillfactor, "
                               "autovacuum_vacuum_threshold, autovacuum_vacuum_scale_factor, "
                               "autovacuum_vacuum_cost_delay, autovacuum_analyze_threshold, "
                               "autovacuum_analyze_scale_factor)")
        options = await conn.fetchval("SELECT reloptions FROM pg_class "
                                      "WHERE relname = 'pgqrs_messages'")
        rate_start = await _claim_rate(dsn)
        size_start = dict(await conn.fetchrow(_SIZE))
        consumers = _Consumers(dsn, 4, 50)
        ctx = multiprocessing.get_context("spawn")
        producer = ctx.Process(target=_produce, args=(dsn, messages, 20_000))
        started = time.time()
        producer.start()
        peak: dict[str, Any] = {}
        while producer.is_alive():
            await asyncio.sleep(1)
            sample = dict(await conn.fetchrow(_SIZE))
            if sample["total"] > peak.get("total", 0):
                peak = sample
        while await conn.fetchval("SELECT count(*) FROM pgqrs_messages") > 0:
            await asyncio.sleep(0.2)
        flowed = time.time() - started
        consumers.finish()
        size_end = dict(await conn.fetchrow(_SIZE))
        await asyncio.sleep(15)  # let autovacuum catch up, as it would on a live system
        size_settled = dict(await conn.fetchrow(_SIZE))
        rate_end = await _claim_rate(dsn)
    finally:
        await conn.close()

    def mib(row: dict[str, Any]) -> dict[str, Any]:
        return {"total_mib": round(row["total"] / 2**20, 2),
                "heap_mib": round(row["heap"] / 2**20, 2),
                "indexes_mib": round(row["indexes"] / 2**20, 2),
                "hot_update_share": round(row["hot"] / row["upd"], 3) if row["upd"] else None,
                "autovacuums": row["autovacuums"]}

    return {"storage": storage, "reloptions": options, "messages": messages,
            "flow_seconds": round(flowed, 1), "msgs_per_s": round(messages / flowed),
            "start": mib(size_start), "peak": mib(peak), "end": mib(size_end),
            "after_15s_idle": mib(size_settled), "claim_rate_start": rate_start,
            "claim_rate_end": rate_end}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("archive", "purge", "churn"))
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--storage", choices=("pgqrs", "default", "both"), default="both")
    parser.add_argument("--dsn", default=None, help="an existing server (a role with CREATEDB)")
    parser.add_argument("--pg-tmpdir", default=None)
    parser.add_argument("--no-durable", action="store_true")
    args = parser.parse_args()
    with server(args.dsn, durable=not args.no_durable, tmpdir=args.pg_tmpdir) as pg:
        print(pg.description, flush=True)
        databases = Databases(pg.dsn)
        await databases.create_template()
        try:
            async with databases.fresh() as dsn, databases.fresh() as other:
                if args.what == "archive":
                    result = await archive(dsn, other, args.rows or 10_000_000, args.calls,
                                           args.rounds)
                elif args.what == "purge":
                    result = await purge(dsn, args.rows or 1_000_000)
                else:
                    result = {}
            if args.what == "churn":
                variants = ("pgqrs", "default") if args.storage == "both" else (args.storage,)
                result = {}
                for variant in variants:
                    async with databases.fresh() as fresh:
                        result[variant] = await churn(fresh, args.messages, variant)
                        print(json.dumps(result[variant]), flush=True)
            print(json.dumps(result, indent=2), flush=True)
        finally:
            await databases.drop_template()


if __name__ == "__main__":
    asyncio.run(main())
