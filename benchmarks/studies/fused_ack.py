"""What the fused acknowledge-and-claim saves: statements, client CPU and time per message.

Usage (from the repository root)::

    python -m benchmarks.studies.fused_ack [--messages 5000] [--rounds 3] [--only KEYS]
        [--dsn URL] [--pg-tmpdir /dev/shm] [--no-durable]

Each round runs every variant on a fresh database of ``messages`` preloaded messages, in
an order that rotates from round to round:

- ``drain1 two`` / ``drain1 fused``: one consumer handling one message at a time, with
  ``dequeue(1)`` + ``archive_batch([id])`` (two statements per message), or with
  ``archive_and_dequeue(previous, 1)`` (one);
- ``drain1x4 two`` / ``drain1x4 fused``: the same with four consumers;
- ``drain50 two`` / ``drain50 fused``: batches of 50, one consumer;
- ``loop50``, ``loop1``: ``Consumer.consume`` with a no-op handler,
  ``batch_size=concurrency=`` 50 or 1, until idle (the loop sends its acks with its claims
  where this pgqrs has ``archive_and_dequeue``).

Variants need what the imported pgqrs offers: on a pgqrs without ``archive_and_dequeue``
(run with ``PYTHONPATH`` pointing at an older checkout) the ``fused`` ones are skipped, so
the loop's before/after is two runs of this study, one per checkout.

Per run it prints msg/s, the client's CPU µs per message and the committed transactions
per message (``pg_stat_database.xact_commit`` of the run's database: every autocommit
statement is one, with its WAL flush), and then the medians. Not a test and not timed in
CI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from benchmarks import scenarios
from benchmarks.server import QUEUE, Databases, server
from pgqrs import Consumer, QueueMessage

FUSED = hasattr(Consumer, "archive_and_dequeue")
Run = Callable[[list[Consumer]], Awaitable[int]]


async def _two(consumer: Consumer, batch: int) -> int:
    handled = 0
    while claimed := await consumer.dequeue(batch):
        await consumer.archive_batch(claimed)
        handled += len(claimed)
    return handled


async def _fused(consumer: Consumer, batch: int) -> int:
    handled = 0
    done: list[QueueMessage] = []
    while True:
        acked, claimed = await consumer.archive_and_dequeue(done, batch)
        handled += sum(acked)
        if not claimed:
            return handled
        done = claimed


async def _noop(message: Any) -> None:
    return None


def _drain(style: Callable[[Consumer, int], Awaitable[int]], batch: int) -> Run:
    async def run(consumers: list[Consumer]) -> int:
        return sum(await asyncio.gather(*(style(c, batch) for c in consumers)))
    return run


def _loop(batch: int) -> Run:
    async def run(consumers: list[Consumer]) -> int:
        (consumer,) = consumers
        return await consumer.consume(_noop, batch_size=batch, concurrency=batch,
                                      poll_interval=0.01, stop_when_idle=True)
    return run


VARIANTS: dict[str, tuple[int, Run, bool]] = {
    # name: (consumers, run, needs archive_and_dequeue)
    "drain1 two": (1, _drain(_two, 1), False),
    "drain1 fused": (1, _drain(_fused, 1), True),
    "drain1x4 two": (4, _drain(_two, 1), False),
    "drain1x4 fused": (4, _drain(_fused, 1), True),
    "drain50 two": (1, _drain(_two, 50), False),
    "drain50 fused": (1, _drain(_fused, 50), True),
    "loop50": (1, _loop(50), False),
    "loop1": (1, _loop(1), False),
}


async def _commits(dsn: str) -> int:
    await asyncio.sleep(0.6)  # backends report their counts at exit or once a second
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
    finally:
        await conn.close()


async def run_once(dsn: str, name: str, messages: int) -> tuple[scenarios.Measurement, float]:
    count, run, _ = VARIANTS[name]
    await scenarios.preload(dsn, messages + count)
    consumers = [Consumer(dsn, QUEUE, "bench-consumer", i, visibility_timeout=30)
                 for i in range(count)]
    for consumer in consumers:  # register and warm up on one message each
        (warm,) = await consumer.dequeue()
        await consumer.archive(warm)
    before = await _commits(dsn)
    try:
        with scenarios.Clock() as clock:
            handled = await run(consumers)
    finally:
        for consumer in consumers:
            await consumer.close()
    statements = await _commits(dsn) - before - 1  # this count's own transaction
    if handled != messages:
        raise RuntimeError(f"{name}: handled {handled} of {messages}")
    return scenarios.Measurement(handled, clock.wall, clock.cpu), statements / messages


async def study(dsn: str, *, messages: int, rounds: int, only: list[str]) -> None:
    names = [n for n in only if FUSED or not VARIANTS[n][2]]
    databases = Databases(dsn)
    await databases.create_template()
    results: dict[str, list[tuple[scenarios.Measurement, float]]] = {n: [] for n in names}
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                async with databases.fresh() as fresh:
                    m, per = await run_once(fresh, name, messages)
                results[name].append((m, per))
                print(f"round {r + 1} {name:>15}: {m.rate:8.0f} msg/s, "
                      f"{m.cpu_per_message * 1e6:6.1f} µs CPU/msg, {per:5.2f} stmts/msg "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        await databases.drop_template()
    print(f"\nmedian of {rounds} rounds, {messages} messages "
          f"(archive_and_dequeue: {'yes' if FUSED else 'no'}):")
    print("| variant | msg/s | client CPU µs/msg | statements/msg |\n|---|--:|--:|--:|")
    for name in names:
        rate = statistics.median(m.rate for m, _ in results[name])
        cpu = statistics.median(m.cpu_per_message for m, _ in results[name])
        per = statistics.median(p for _, p in results[name])
        print(f"| {name} | {rate:,.0f} | {cpu * 1e6:.1f} | {per:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help=f"comma-separated variants of: {', '.join(VARIANTS)}")
    parser.add_argument("--dsn", default=None, help="an existing server (a role with CREATEDB)")
    parser.add_argument("--pg-tmpdir", default=None,
                        help="data directory of the throw-away server (/dev/shm: RAM)")
    parser.add_argument("--no-durable", action="store_true",
                        help="fsync and synchronous_commit off (client overhead weighs more)")
    args = parser.parse_args()
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := [n for n in only if n not in VARIANTS]:
        parser.error(f"unknown variants: {unknown}")
    started = time.perf_counter()
    with server(args.dsn, durable=not args.no_durable, tmpdir=args.pg_tmpdir) as pg:
        print(f"server: {pg.description}; load average {os.getloadavg()[0]:.1f}")
        asyncio.run(study(pg.dsn, messages=args.messages, rounds=args.rounds, only=only))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
