"""What Prometheus metrics cost the consume loop: ``ConsumeMetrics`` on versus off.

Usage (from the repository root)::

    python -m benchmarks.studies.metrics_overhead [--messages 20000] [--rounds 5]
        [--batch 50] [--dsn URL] [--pg-tmpdir /dev/shm] [--no-durable]

Each round drains a fresh queue of ``messages`` preloaded messages with ``Consumer.consume``
(no-op handler, ``batch_size=concurrency=batch``, ``stop_when_idle``) three ways, in an
order that rotates from round to round so drift on a shared machine hits every variant
alike:

- ``off``: no hook;
- ``on``: ``on_settled=metrics, on_claimed=metrics.claimed`` with ``metrics =
  ConsumeMetrics(...)`` (a counter and two histogram observations per delivery, one
  observation per claim);
- ``on+scrape``: the same, plus the queue-state collector scraped every second from
  another thread (the database-side cost of a Prometheus scraping the queue meanwhile).

It prints each run and, per variant, the median rate (messages/s), the median client CPU
per message, and the ratio to ``off``. A no-op handler is the worst case for the hook's
relative cost: any real handler makes it smaller. Not a test and not timed in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from benchmarks import scenarios
from benchmarks.server import QUEUE, Databases, server
from pgqrs import Consumer
from pgqrs.prometheus import ConsumeMetrics, QueueCollector

VARIANTS = ("off", "on", "on+scrape")


async def _noop(message: Any) -> None:
    return None


class _Scraper:
    """Scrapes a registry every ``interval`` seconds from a thread, like Prometheus would."""

    def __init__(self, dsn: str, interval: float = 1.0) -> None:
        self.registry = CollectorRegistry()
        self.collector = QueueCollector(dsn)
        self.registry.register(self.collector)
        self.interval = interval
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            generate_latest(self.registry)
            self.scrapes += 1

    def __enter__(self) -> _Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def run_once(dsn: str, variant: str, *, messages: int, batch: int
                   ) -> scenarios.Measurement:
    await scenarios.preload(dsn, messages)
    hook = ConsumeMetrics(QUEUE, registry=CollectorRegistry()) if variant != "off" else None
    scraper = _Scraper(dsn) if variant == "on+scrape" else None
    async with Consumer(dsn, QUEUE, "bench-consumer", 0, visibility_timeout=30) as consumer:
        (warm,) = await consumer.dequeue()  # register and warm up on one message
        await consumer.archive(warm.id)
        with scenarios.Clock() as clock:
            if scraper is not None:
                scraper.__enter__()
            try:
                handled = await consumer.consume(
                    _noop, batch_size=batch, concurrency=batch, poll_interval=0.01,
                    stop_when_idle=True, on_settled=hook,
                    on_claimed=hook.claimed if hook is not None else None)
            finally:
                if scraper is not None:
                    scraper.__exit__()
    if handled != messages - 1:
        raise RuntimeError(f"{variant}: handled {handled} of {messages - 1}")
    return scenarios.Measurement(handled, clock.wall, clock.cpu)


async def study(dsn: str, *, messages: int, rounds: int, batch: int) -> None:
    databases = Databases(dsn)
    await databases.create_template()
    results: dict[str, list[scenarios.Measurement]] = {v: [] for v in VARIANTS}
    try:
        for r in range(rounds):
            order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
            for variant in order:
                async with databases.fresh() as fresh:
                    m = await run_once(fresh, variant, messages=messages, batch=batch)
                results[variant].append(m)
                print(f"round {r + 1} {variant:>9}: {m.rate:8.0f} msg/s, "
                      f"{m.cpu_per_message * 1e6:6.1f} µs CPU/msg", flush=True)
    finally:
        await databases.drop_template()
    base = statistics.median(m.rate for m in results["off"])
    base_cpu = statistics.median(m.cpu_per_message for m in results["off"])
    print(f"\nmedian of {rounds} rounds, {messages} messages, batch {batch}:")
    for variant in VARIANTS:
        rate = statistics.median(m.rate for m in results[variant])
        cpu = statistics.median(m.cpu_per_message for m in results[variant])
        print(f"  {variant:>9}: {rate:8.0f} msg/s ({rate / base:6.1%} of off), "
              f"{cpu * 1e6:6.1f} µs CPU/msg ({(cpu - base_cpu) * 1e6:+5.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--dsn", default=None, help="an existing server (a role with CREATEDB)")
    parser.add_argument("--pg-tmpdir", default=None,
                        help="data directory of the throw-away server (/dev/shm: RAM)")
    parser.add_argument("--no-durable", action="store_true",
                        help="fsync and synchronous_commit off (client overhead weighs more)")
    args = parser.parse_args()
    started = time.perf_counter()
    with server(args.dsn, durable=not args.no_durable, tmpdir=args.pg_tmpdir) as pg:
        print(f"server: {pg.description}")
        asyncio.run(study(pg.dsn, messages=args.messages, rounds=args.rounds,
                          batch=args.batch))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
