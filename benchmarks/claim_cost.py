"""Claim cost stays flat however the queue is shaped; what a dedup key costs an enqueue.

Usage (from the repository root)::

    python -m benchmarks.claim_cost [--calls 1000] [--rounds 3] [--dsn URL]
                                    [--shared-buffers 1GB] [--json results.json] [--smoke]

A throw-away server keeps PostgreSQL's default ``shared_buffers`` (128 MB), smaller than
the million-message shapes with their indexes (~250 MB); ``--shared-buffers 1GB`` gives it
room (the figures barely move).

Every shape gets its own database (cloned from the benchmarks' template), loaded with SQL
(``generate_series``; the shape matters here, not how the rows got there) and then
``VACUUM ANALYZE``d, as autovacuum would leave a long-lived table. Then one client per
shape times ``Consumer.dequeue(1)`` + ``Consumer.archive(message)`` through the public API,
``calls`` times per round after a warm-up, the shapes taking turns call by call (so a noisy
neighbour on the machine hits all of them alike). After each timed cycle (untimed) one
message goes back in where the claimed one came from, so the shape stays as loaded.

Shapes:
- ``small``: 1,000 visible messages (the reference);
- ``1M``: 1,000,000 visible messages;
- ``delayed``: 100,000 delayed messages with lower ids than 1,000 visible ones (before
  pgqrs_0003 every claim walked past them: 86x slower for 300,000);
- ``priorities``: 100,000 delayed messages on five priority levels above 1,000 visible
  ones at priority 0;
- ``groups``: 10,000 ordered groups of 100 (1,000,000 messages, 10,000 heads), acked through
  the groups' transactional path; ``groups-small`` (10 groups of 100) is its reference.

Enqueue: ``Producer.enqueue`` with a fresh ``dedup_key`` each call against a plain
``enqueue``, alternating call by call on one producer, into the 1,000-message queue.

Printed: p50 and p90 per shape (milliseconds), and each shape's p50 over its reference's
p50, per round and their median. The goal is 1.2x for claims and 1.3x for dedup enqueues.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from benchmarks.server import QUEUE, Databases, default_tmpdir, server
from pgqrs import Consumer, Producer

VISIBLE = ("INSERT INTO pgqrs_messages (queue_id, payload, vt) SELECT 1, "
           "jsonb_build_object('n', i), now() - interval '1 min' FROM generate_series(1, {n}) i")


@dataclass(frozen=True)
class Shape:
    key: str
    title: str
    load: tuple[str, ...]
    reference: str


def _grouped(groups: int, per_group: int) -> tuple[str, ...]:
    return (
        f"INSERT INTO pgqrs_messages (queue_id, payload, group_key, parked) SELECT 1, "
        f"jsonb_build_object('n', i), 'g' || (i % {groups}), i > {groups} "
        f"FROM generate_series(1, {groups * per_group}) i",
        f"INSERT INTO pgqrs_groups (queue_id, group_key, live) SELECT 1, 'g' || i, "
        f"{per_group} FROM generate_series(0, {groups - 1}) i",
    )


def shapes(scale: float = 1.0) -> tuple[Shape, ...]:
    """The shapes; ``scale`` shrinks the big ones (``--smoke``), never the references."""
    def n(count: int) -> int:
        return max(int(count * scale), 1000)

    return (
        Shape("small", "1,000 waiting", (VISIBLE.format(n=1000),), "small"),
        Shape("1M", f"{n(1_000_000):,} waiting", (VISIBLE.format(n=n(1_000_000)),), "small"),
        Shape("delayed", f"{n(100_000):,} delayed queued ahead of 1,000 visible", (
            "INSERT INTO pgqrs_messages (queue_id, payload, vt) SELECT 1, '{}', "
            f"now() + interval '30 days' FROM generate_series(1, {n(100_000)})",
            VISIBLE.format(n=1000)), "small"),
        Shape("priorities", f"{n(100_000):,} delayed on 5 higher priorities, 1,000 visible", (
            "INSERT INTO pgqrs_messages (queue_id, payload, vt, priority) SELECT 1, '{}', "
            f"now() + interval '30 days', 1 + i % 5 FROM generate_series(1, {n(100_000)}) i",
            VISIBLE.format(n=1000)), "small"),
        Shape("groups-small", "10 groups x 100", _grouped(10, 100), "groups-small"),
        Shape("groups", f"{n(10_000):,} groups x 100",
              _grouped(n(10_000), 100), "groups-small"),
    )


@dataclass
class Timings:
    samples: dict[str, list[list[float]]] = field(default_factory=dict)

    def add(self, key: str, values: list[float]) -> None:
        self.samples.setdefault(key, []).append(values)

    def p(self, key: str, q: int, round_: int | None = None) -> float:
        rounds = self.samples[key] if round_ is None else [self.samples[key][round_]]
        values = sorted(v for r in rounds for v in r)
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def _load(dsn: str, statements: tuple[str, ...]) -> None:
    conn = await asyncpg.connect(dsn, command_timeout=None)
    try:
        for statement in statements:
            await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def _claims(where: dict[str, str], chosen: tuple[Shape, ...], calls: int,
                  warm: int) -> dict[str, list[float]]:
    """Timed cycles, one shape after the other call by call: a burst of noise from the
    rest of the machine falls on every shape alike."""
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for shape in chosen:
            consumer = await stack.enter_async_context(
                Consumer(where[shape.key], QUEUE, f"bench-{shape.key}", 1))
            producer = await stack.enter_async_context(
                Producer(where[shape.key], QUEUE, f"bench-refill-{shape.key}", 2))
            clients[shape.key] = (consumer, producer)
        out: dict[str, list[float]] = {shape.key: [] for shape in chosen}
        for i in range(warm + calls):
            for key, (consumer, producer) in clients.items():
                t0 = time.perf_counter()
                (message,) = await consumer.dequeue(1)
                assert await consumer.archive(message)
                elapsed = time.perf_counter() - t0
                if i >= warm:
                    out[key].append(elapsed)
                await producer.enqueue({"n": -i}, group=message.group)
        return out


async def _enqueues(dsn: str, calls: int, warm: int) -> tuple[list[float], list[float]]:
    async with Producer(dsn, QUEUE, "bench-enqueue", 3) as producer:
        plain: list[float] = []
        keyed: list[float] = []
        stamp = time.time_ns()
        for i in range(warm + calls):
            t0 = time.perf_counter()
            await producer.enqueue({"n": i})
            t1 = time.perf_counter()
            await producer.enqueue({"n": i}, dedup_key=f"k-{stamp}-{i}")
            t2 = time.perf_counter()
            if i >= warm:
                plain.append(t1 - t0)
                keyed.append(t2 - t1)
        return plain, keyed


async def run(dsn: str | None, *, calls: int, rounds: int, warm: int,
              tmpdir: str | None, scale: float = 1.0,
              shared_buffers: str | None = None) -> dict[str, Any]:
    chosen = shapes(scale)
    conf = {"shared_buffers": shared_buffers} if shared_buffers else None
    with server(dsn, tmpdir=tmpdir, extra_conf=conf) as srv:
        print(f"# {srv.description}; shared_buffers={shared_buffers or 'default'}",
              flush=True)
        dbs = Databases(srv.dsn)
        await dbs.create_template()
        stack: list[Any] = []
        where: dict[str, str] = {}
        try:
            for shape in chosen:
                manager = dbs.fresh()
                stack.append(manager)
                where[shape.key] = await manager.__aenter__()
                started = time.perf_counter()
                await _load(where[shape.key], shape.load)
                print(f"# loaded {shape.key} ({shape.title}) in "
                      f"{time.perf_counter() - started:.1f} s", flush=True)
            timings = Timings()
            for round_ in range(rounds):
                for key, values in (await _claims(where, chosen, calls, warm)).items():
                    timings.add(key, values)
                plain, keyed = await _enqueues(where["small"], calls, warm)
                timings.add("enqueue", plain)
                timings.add("enqueue+dedup", keyed)
                print(f"# round {round_ + 1} of {rounds} done", flush=True)
        finally:
            for manager in reversed(stack):
                await manager.__aexit__(None, None, None)
            await dbs.drop_template()
    return report(timings, rounds, chosen)


def _ratios(timings: Timings, key: str, reference: str, rounds: int) -> list[float]:
    return [timings.p(key, 50, r) / timings.p(reference, 50, r) for r in range(rounds)]


def report(timings: Timings, rounds: int, chosen: tuple[Shape, ...]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    print()
    print(f"| shape | p50 ms | p90 ms | p50 vs reference (median of {rounds} rounds; range) |")
    print("|---|---:|---:|---|")
    pairs = [(s.key, s.title, s.reference, "dequeue(1) + archive") for s in chosen]
    pairs += [("enqueue", "plain enqueue", "enqueue", "enqueue"),
              ("enqueue+dedup", "enqueue with a dedup key", "enqueue", "enqueue")]
    for key, title, reference, _ in pairs:
        ratios = _ratios(timings, key, reference, rounds)
        rows[key] = {"title": title, "p50_ms": timings.p(key, 50) * 1000,
                     "p90_ms": timings.p(key, 90) * 1000, "reference": reference,
                     "ratios": ratios, "ratio": statistics.median(ratios)}
        versus = ("reference" if key == reference else
                  f"{statistics.median(ratios):.2f}x {reference} "
                  f"({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"| {title} | {rows[key]['p50_ms']:.2f} | {rows[key]['p90_ms']:.2f} | "
              f"{versus} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.claim_cost",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="timed cycles per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm", type=int, default=200, help="untimed cycles first")
    parser.add_argument("--dsn", default=os.environ.get("PGQRS_DSN"))
    parser.add_argument("--pg-tmpdir", default=None,
                        help=f"where a throw-away server keeps its data ({default_tmpdir()})")
    parser.add_argument("--shared-buffers", default="default",
                        help="shared_buffers of a throw-away server, e.g. 1GB (default: "
                             "PostgreSQL's own)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check: big shapes at 1%%, few calls")
    args = parser.parse_args(argv)
    scale, calls, rounds, warm = ((0.01, 50, 1, 10) if args.smoke else
                                  (1.0, args.calls, args.rounds, args.warm))
    buffers = None if args.shared_buffers == "default" else args.shared_buffers
    rows = asyncio.run(run(args.dsn, calls=calls, rounds=rounds, warm=warm,
                           tmpdir=args.pg_tmpdir, scale=scale, shared_buffers=buffers))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
