"""Client CPU per enqueue call: pgqrs next to the same-SQL floor, robust on a busy machine.

Usage (from the repository root)::

    python -m benchmarks.studies.client_cost [--calls 2000] [--batches 200] [--rounds 3]
                                             [--cycles 2000] [--stub-driver] [--dsn URL]
                                             [--pg-tmpdir DIR]

Wall time on a shared 2-core machine mostly measures the neighbours; the client's CPU time
(``time.process_time``: this process's user + system time, whatever else runs) is what
the library adds. For each round it times, on one fresh database, ``calls`` single
enqueues and ``batches`` enqueues of 100 messages through ``pgqrs.Producer`` and through
the same-SQL floor (``benchmarks.sides.FloorProducer``: pgqrs's exact statements over
raw asyncpg), then ``cycles`` ``dequeue(1)`` + ``archive_batch([id])`` cycles of
preloaded messages (the consumer's hot path, for comparison; ``--cycles 0`` skips them),
the sides and operations taking turns (the side that goes first alternates
by round) so that the machine's noise falls on all of them alike. Payloads are built
before the timed loops (~110-byte JSON, ``benchmarks.scenarios.payload``).

It prints the median over the rounds of client CPU microseconds per call, the range,
pgqrs minus floor (the library's extra CPU per call) and the load average before and
after.

``--stub-driver`` times pgqrs's own Python alone: after registering, the producer's held
connection gets a stand-in driver whose ``fetch`` answers at once (with as many ids as
the call sent messages), so no I/O, event-loop wake-up or driver work is in the figure;
it reaches into a private attribute (``Producer._db._held``) and exists for this study.

The server starts with durability off by default (``--durable`` for the
benchmark's default durability): a commit's fsync costs wall time, not client CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from benchmarks import scenarios
from benchmarks.api import QUEUE, Payload
from benchmarks.server import Databases, default_tmpdir, server
from benchmarks.sides import ConsumerLike, FloorSide, PgqrsSide, ProducerLike, Side
from pgqrs import Producer

Op = Callable[[int], Awaitable[object]]
BATCH = 100
CYCLE = "dequeue(1) + archive"
WARM_UP = 30


def _ops(producer: ProducerLike, singles: list[Payload],
         batches: list[list[Payload]]) -> dict[str, Op]:
    async def single(i: int) -> object:
        return await producer.enqueue(singles[i % len(singles)])

    async def batch(i: int) -> object:
        return await producer.enqueue_batch(batches[i % len(batches)])

    return {"single enqueue": single, f"batch enqueue ({BATCH})": batch}


def _cycle(consumer: ConsumerLike) -> Op:
    async def cycle(i: int) -> object:
        (message,) = await consumer.dequeue(1)
        return await consumer.archive_batch([message.id])
    return cycle


async def _cpu_per_call(op: Op, calls: int) -> float:
    """Client CPU µs per call of ``op``, after a warm-up."""
    for i in range(WARM_UP):
        await op(i)
    c0 = time.process_time()
    for i in range(calls):
        await op(i)
    return (time.process_time() - c0) / calls * 1e6


class _StubDriver:
    """Answers ``fetch`` at once with ``rows``; never closed."""

    def __init__(self) -> None:
        self.rows: list[dict[str, int]] = []

    async def fetch(self, sql: str, *args: object) -> list[dict[str, int]]:
        return self.rows

    def is_closed(self) -> bool:
        return False


async def _stubbed(args: argparse.Namespace, dsn: str) -> None:
    """pgqrs's own Python per enqueue call, the driver stubbed out (``--stub-driver``)."""
    dbs = Databases(dsn)
    await dbs.create_template()
    singles = scenarios.payloads(1000)
    batches = [scenarios.payloads(BATCH) for _ in range(4)]
    found: dict[str, list[float]] = {}
    try:
        async with dbs.fresh() as db:
            producer = Producer(db, QUEUE, "stub-producer", 0)
            await producer.enqueue(singles[0])  # registers, takes the held connection
            held: Any = producer._db._held  # type: ignore[attr-defined]
            real, stub = held.driver, _StubDriver()
            held.driver = stub
            try:
                ops = _ops(producer, singles, batches)
                for _ in range(args.rounds):
                    for label, count, rows in (("single enqueue", 10 * args.calls, 1),
                                               (f"batch enqueue ({BATCH})", args.batches, BATCH)):
                        stub.rows = [{"id": i + 1} for i in range(rows)]
                        found.setdefault(label, []).append(await _cpu_per_call(ops[label], count))
            finally:
                held.driver = real
                await producer.close()
    finally:
        await dbs.drop_template()
    print(f"\npgqrs's own Python, driver stubbed out: client CPU µs per call, median of "
          f"{args.rounds} rounds [range]\n")
    for label, values in found.items():
        print(f"  {label:<20} {statistics.median(values):8.2f} "
              f"[{min(values):.2f}-{max(values):.2f}]")


async def _run(args: argparse.Namespace, dsn: str) -> None:
    dbs = Databases(dsn)
    await dbs.create_template()
    singles = scenarios.payloads(1000)
    batches = [scenarios.payloads(BATCH) for _ in range(4)]
    calls = {"single enqueue": args.calls, f"batch enqueue ({BATCH})": args.batches}
    if args.cycles:
        calls[CYCLE] = args.cycles
    sides: list[Side] = [PgqrsSide(0.01), FloorSide()]
    found: dict[tuple[str, str], list[float]] = {}
    load_before = os.getloadavg()
    try:
        for round_ in range(args.rounds):
            async with dbs.fresh() as db:
                if args.cycles:  # claimed in id order: taken before anything enqueued
                    await scenarios.preload(db, len(sides) * (args.cycles + WARM_UP))
                producers = {side.name: await side.producer(db) for side in sides}
                consumers = {side.name: await side.consumer(db) for side in sides}
                try:
                    order = sides if round_ % 2 == 0 else sides[::-1]
                    for label, count in calls.items():
                        for side in order:
                            op = (_cycle(consumers[side.name]) if label == CYCLE else
                                  _ops(producers[side.name], singles, batches)[label])
                            cpu = await _cpu_per_call(op, count)
                            found.setdefault((label, side.name), []).append(cpu)
                            print(f"  round {round_ + 1} {label:<20} {side.name:<6} "
                                  f"{cpu:8.1f} µs CPU/call", flush=True)
                finally:
                    for producer in producers.values():
                        await producer.close()
                    for consumer in consumers.values():
                        await consumer.close()
    finally:
        await dbs.drop_template()
    load_after = os.getloadavg()
    print(f"\nclient CPU µs per call, median of {args.rounds} rounds [range]; load average "
          f"before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)\n")
    print("| operation | pgqrs | same-SQL floor | pgqrs - floor | per message (pgqrs) |")
    print("|---|--:|--:|--:|--:|")
    for label in calls:
        pg, fl = found[(label, "pgqrs")], found[(label, "floor")]
        per = BATCH if label.startswith("batch") else 1
        mp, mf = statistics.median(pg), statistics.median(fl)
        print(f"| {label} | {mp:.1f} [{min(pg):.0f}-{max(pg):.0f}] | {mf:.1f} "
              f"[{min(fl):.0f}-{max(fl):.0f}] | {mp - mf:+.1f} | {mp / per:.2f} |")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.studies.client_cost``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.client_cost",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="single enqueues per round")
    parser.add_argument("--batches", type=int, default=200,
                        help=f"batch enqueues ({BATCH} messages each) per round")
    parser.add_argument("--cycles", type=int, default=2000,
                        help="dequeue(1) + archive_batch cycles per round (0: none)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stub-driver", action="store_true",
                        help="time pgqrs's own Python only, the driver stubbed out")
    parser.add_argument("--dsn", default=os.environ.get("PGQRS_DSN"))
    parser.add_argument("--durable", action="store_true",
                        help="start the server with default durability (fsync on)")
    parser.add_argument("--pg-tmpdir", default=default_tmpdir(),
                        help="data directory root of the throw-away server")
    args = parser.parse_args(argv)
    with server(args.dsn, durable=args.durable, tmpdir=args.pg_tmpdir) as pg:
        print(f"# pgqrs client CPU per enqueue ({pg.description})")
        asyncio.run(_stubbed(args, pg.dsn) if args.stub_driver else _run(args, pg.dsn))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
