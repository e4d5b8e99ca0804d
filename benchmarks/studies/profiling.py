"""Where a pgqrs call spends client time, next to the floor doing the same work.

Usage (from the repository root)::

    python -m benchmarks.studies.profiling [--calls 2000] [--dsn URL] [--top 25] [--dump DIR]

For each side it times, then profiles (cProfile with a CPU-time clock, so waiting for the
server and being preempted by other processes do not count), ``calls`` single enqueues
and ``calls`` ``dequeue(1)`` + ``archive_batch([id])`` cycles, and prints per call: wall
and CPU time without the profiler, profiled CPU by package (SQLAlchemy split by sub-package,
greenlet, asyncpg, pgqrs, asyncio, json), the costliest functions, inclusive times of
the interesting layers, and, when it started the server itself, the statements each call
sends (counted from the server log with ``log_statement = 'all'``; asyncpg sends one
statement per round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
import pstats
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import scenarios
from benchmarks.server import Databases, default_tmpdir, server
from benchmarks.sides import ConsumerLike, FloorSide, PgqrsSide, ProducerLike, Side

Op = Callable[[], Awaitable[object]]

# (label, file regex, function regex): inclusive time of these layers.
LAYERS: list[tuple[str, str, str]] = [
    ("pgqrs: Producer.enqueue", r"pgqrs/producer\.py", r"^enqueue$"),
    ("pgqrs: Consumer.dequeue", r"pgqrs/consumer\.py", r"^dequeue$"),
    ("pgqrs: Consumer.archive_batch", r"pgqrs/consumer\.py", r"^archive_batch$"),
    ("pgqrs: _validation.encode_payload", r"pgqrs/_validation\.py", r"^encode_payload$"),
    ("pgqrs: WorkerClient._ids", r"pgqrs/_worker\.py", r"^_ids$"),
    ("pgqrs: messages.to_message", r"repositories/messages\.py", r"^to_message$"),
    ("SA: AsyncEngine.begin (checkout + BEGIN)", r"ext/asyncio/engine\.py", r"^begin$"),
    ("SA: AsyncConnection.execute", r"ext/asyncio/engine\.py", r"^execute$"),
    ("SA: AsyncTransaction.__aexit__ (COMMIT)", r"ext/asyncio/engine\.py", r"^__aexit__$"),
    ("SA: Connection._execute_clauseelement", r"engine/base\.py",
     r"^_execute_clauseelement$"),
    ("SA:   ClauseElement._compile_w_cache", r"sql/elements\.py", r"^_compile_w_cache$"),
    ("SA:   cache key generation", r"sql/cache_key\.py", r"^_generate_cache_key$"),
    ("SA:   DefaultExecutionContext._init_compiled", r"engine/default\.py",
     r"^_init_compiled$"),
    ("SA:   Connection._exec_single_context", r"engine/base\.py",
     r"^_exec_single_context$"),
    ("SA:   schema_translate_map rendering (regex)", r"sql/compiler\.py",
     r"^_render_schema_translates$"),
    ("SA: result rows (Result.scalar_one/scalars/iter)", r"engine/(result|cursor)\.py",
     r"^(scalar_one|scalars|__iter__|_allrows|_fetchall_impl|iterrows)$"),
    ("SA: pool checkout", r"pool/base\.py", r"^_checkout$"),
    ("SA: pool checkin (reset)", r"pool/base\.py", r"^_finalize_fairy$"),
    ("greenlet: greenlet_spawn", r"_concurrency_py3k\.py", r"^greenlet_spawn$"),
    ("greenlet: await_only", r"_concurrency_py3k\.py", r"^await_(only|fallback)$"),
    ("SA asyncpg adapter: _prepare_and_execute", r"dialects/postgresql/asyncpg\.py",
     r"^_prepare_and_execute$"),
    ("SA asyncpg adapter: _start_transaction (BEGIN)", r"dialects/postgresql/asyncpg\.py",
     r"^_start_transaction$"),
    ("asyncpg: PreparedStatement fetch/fetchval", r"asyncpg/prepared_stmt\.py",
     r"^(fetch|fetchval|__bind_execute|_PreparedStatement__bind_execute)$"),
    ("json: loads / dumps", r"json/__init__\.py", r"^(loads|dumps)$"),
]


def category(filename: str, function: str) -> str:
    """The bucket a profiled function's self time goes to."""
    where = f"{filename}:{function}"
    if "greenlet" in where or "_concurrency_py3k" in filename:
        return "greenlet (switches, spawn)"
    if "_socket.socket" in function or "epoll" in function:
        return "syscalls (socket send/recv, epoll)"
    match = re.search(r"sqlalchemy/([a-z_]+)", filename)
    if match:
        sub = match.group(1)
        return f"SQLAlchemy {sub}/" if sub in {"sql", "engine", "pool", "ext", "dialects",
                                                 "util", "event"} else "SQLAlchemy other"
    if "asyncpg" in where:
        return "asyncpg"
    if "/pgqrs/" in filename:
        return "pgqrs (our own Python)"
    if "re.Pattern" in function or filename.endswith(("/re/__init__.py", "/re.py")):
        return "re (regex)"
    if "/asyncio/" in filename or "_asyncio" in where or "selectors" in filename:
        return "asyncio + selectors"
    if "/json/" in filename or "json" in function:
        return "json"
    if "/benchmarks/" in filename:
        return "benchmark harness"
    return "other (builtins, contextlib, stdlib)"


def report(title: str, stats: pstats.Stats, calls: int, top: int) -> str:
    """Per-call profile breakdown of one operation."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    per = 1e6 / calls
    by_cat: collections.Counter[str] = collections.Counter()
    rows = []
    for (filename, _line, function), (_cc, ncalls, tottime, cumtime, _) in raw.items():
        by_cat[category(filename, function)] += tottime
        rows.append((tottime, cumtime, ncalls, filename, function))
    total = sum(by_cat.values())
    out = [f"\n### {title}: {total * per:.0f} µs client CPU per call under cProfile "
           "(its overhead inflates Python-heavy code)\n", "by package (self CPU, µs/call):"]
    out += [f"  {name:<34} {t * per:7.1f}  {t / total:5.1%}"
            for name, t in by_cat.most_common()]
    out.append(f"\ntop {top} functions by self CPU (µs/call; calls/call, where a coroutine "
               "counts once per resumption):")
    for tottime, cumtime, ncalls, filename, function in sorted(rows, reverse=True)[:top]:
        short = re.sub(r".*/site-packages/|.*/lib/python3\.\d+/|.*/work/main/", "", filename)
        out.append(f"  {tottime * per:7.1f} self {cumtime * per:8.1f} incl "
                   f"{ncalls / calls:6.1f}x  {short}:{function}")
    layer_lines = []
    for label, file_re, func_re in LAYERS:
        cum, n = 0.0, 0
        for (filename, _line, function), (_cc, ncalls, _tt, cumtime, _) in raw.items():
            if re.search(file_re, filename) and re.search(func_re, function):
                cum += cumtime
                n += ncalls
        if n:
            layer_lines.append(f"  {cum * per:8.1f} µs incl  {n / calls:5.1f}x  {label}")
    if layer_lines:
        out += ["\nlayers (inclusive µs/call; nested, so they do not add up):", *layer_lines]
    return "\n".join(out)


async def _time(op: Op, calls: int) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await op()
    return ((time.perf_counter() - t0) / calls * 1e6, (time.process_time() - c0) / calls * 1e6)


async def _profile(op: Op, calls: int) -> pstats.Stats:
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(calls):
        await op()
    profiler.disable()
    return pstats.Stats(profiler)


def _enqueue_op(producer: ProducerLike) -> Op:
    counter = iter(range(10**9))

    async def op() -> object:
        return await producer.enqueue(scenarios.payload(next(counter)))
    return op


def _cycle_op(consumer: ConsumerLike) -> Op:
    async def op() -> object:
        (message,) = await consumer.dequeue(1)
        return await consumer.archive_batch([message.id])
    return op


async def _statements(dbs: Databases, log: Path, side: Side, ops: int) -> dict[str, str]:
    """Statements per enqueue and per dequeue+archive cycle, from the server log."""
    found: dict[str, str] = {}
    async with dbs.fresh() as dsn:
        name = dsn.rsplit("/", 1)[1]
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'ALTER DATABASE "{name}" SET log_statement = \'all\'')
        await conn.close()
        await side.prepare(dsn, latency=False)
        await scenarios.preload(dsn, 2 * ops + 10)
        producer = await side.producer(dsn)
        consumer = await side.consumer(dsn)
        try:
            for label, op in (("enqueue", _enqueue_op(producer)),
                              ("dequeue+archive", _cycle_op(consumer))):
                for _ in range(5):  # warm-up: registration, statement preparation
                    await op()
                start = log.stat().st_size
                for _ in range(ops):
                    await op()
                await asyncio.sleep(0.2)
                with log.open("rb") as fh:
                    fh.seek(start)
                    text = fh.read().decode("utf-8", "replace")
                kinds = collections.Counter(
                    m.group(2).split()[0].upper().rstrip(";")
                    for m in re.finditer(r"LOG:\s+(statement|execute [^:]*):\s+(\S+)", text))
                per = sum(kinds.values()) / ops
                parts = ", ".join(f"{k} {v / ops:g}" for k, v in sorted(kinds.items()))
                found[label] = f"{per:g} statements per call ({parts})"
        finally:
            await producer.close()
            await consumer.close()
    return found


async def _run(args: argparse.Namespace, dsn: str, log: Path | None) -> None:
    dbs = Databases(dsn)
    await dbs.create_template()
    sides: list[Side] = [FloorSide(), PgqrsSide(0.001)]
    dump: Path | None = args.dump
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
    try:
        for side in sides:
            async with dbs.fresh() as db:
                await side.prepare(db, latency=False)
                await scenarios.preload(db, 2 * args.calls + 60)
                producer = await side.producer(db)
                consumer = await side.consumer(db)
                try:
                    for label, op in (("enqueue", _enqueue_op(producer)),
                                      ("dequeue(1) + archive_batch([id])",
                                       _cycle_op(consumer))):
                        for _ in range(30):
                            await op()
                        wall, cpu = await _time(op, args.calls)
                        stats = await _profile(op, args.calls)
                        print(f"\n## {side.name} {label}: {wall:.0f} µs wall, {cpu:.0f} µs "
                              f"client CPU per call (unprofiled, {args.calls} calls)")
                        print(report(f"{side.name} {label}", stats, args.calls, args.top))
                        if dump:
                            slug = re.sub(r"\W+", "_", f"{side.name}_{label}").strip("_")
                            stats.dump_stats(dump / f"{slug}.prof")
                finally:
                    await producer.close()
                    await consumer.close()
        if log is not None:
            print("\n## Statements (round trips) per call, from the server log")
            for side in sides:
                for label, text in (await _statements(dbs, log, side, 50)).items():
                    print(f"  {side.name:<5} {label:<16} {text}")
    finally:
        await dbs.drop_template()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.studies.profiling``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.profiling",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--dsn", default=os.environ.get("PGQRS_DSN"))
    parser.add_argument("--pg-tmpdir", default=default_tmpdir(),
                        help="data directory root of the throw-away server")
    parser.add_argument("--dump", type=Path, help="also write .prof files here")
    args = parser.parse_args(argv)
    with server(args.dsn, tmpdir=args.pg_tmpdir) as pg:
        print(f"# pgqrs client-side profile ({pg.description})")
        asyncio.run(_run(args, pg.dsn, pg.log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
