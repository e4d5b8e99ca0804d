"""What OpenTelemetry tracing (with Prometheus metrics) costs the consume loop.

Usage (from the repository root)::

    python -m benchmarks.studies.tracing_overhead [--messages 20000] [--rounds 5]
        [--batch 50] [--handler-ms 0] [--dsn URL] [--pg-tmpdir /dev/shm] [--no-durable]

Each round drains a fresh queue of ``messages`` preloaded messages with ``Consumer.consume``
(a no-op handler, or one that awaits ``--handler-ms`` milliseconds, as a handler waiting
on I/O does; ``batch_size=concurrency=batch``, ``stop_when_idle``) four ways, in an
order that rotates from round to round:

- ``neither``: no hook, pgqrs not instrumented;
- ``metrics``: ``on_settled=ConsumeMetrics(...)``;
- ``metrics+traces``: the same, plus ``pgqrs.otel.instrument()`` with the OpenTelemetry
  SDK (``BatchSpanProcessor``, an exporter that drops what it gets: the export's own cost
  is the exporter's, not pgqrs's); every message carries a sampled ``traceparent``, as if
  its producer was traced, so every delivery records a span;
- ``metrics+traces 10%``: the same, with one message in ten sampled by its producer
  (``ParentBased`` sampling, the usual production setting): the others get non-recording
  spans.

The headers are written (and the table vacuumed) before the clock starts, in every variant,
so the database's work is the same in all four. It prints each run and, per variant, the
median rate, the median client CPU per message and the ratio to ``neither``. A no-op
handler is the worst case for the relative cost. Not a test and not timed in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

import pgqrs.otel
from benchmarks import scenarios
from benchmarks.server import QUEUE, Databases, server
from pgqrs import Consumer
from pgqrs.prometheus import ConsumeMetrics

VARIANTS = ("neither", "metrics", "metrics+traces", "metrics+traces 10%")


class _Drop(SpanExporter):
    """Receives the finished spans and keeps nothing (counts them, as a check)."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


async def _noop(message: Any) -> None:
    return None


def _waiting(seconds: float) -> Any:
    async def handler(message: Any) -> None:
        await asyncio.sleep(seconds)
    return handler


async def _add_trace_context(dsn: str, sampled_every: int) -> None:
    """A distinct traceparent per message; sampled for one in ``sampled_every``."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE pgqrs_messages SET headers = jsonb_build_object('traceparent',"
            " '00-' || md5(id::text) || '-' || left(md5('s' || id), 16) || '-' ||"
            " CASE WHEN id % $1 = 0 THEN '01' ELSE '00' END)", sampled_every)
        await conn.execute("VACUUM ANALYZE pgqrs_messages")  # no dead rows from the update
    finally:
        await conn.close()


async def run_once(dsn: str, variant: str, *, messages: int, batch: int,
                   handler_ms: float = 0.0) -> tuple[scenarios.Measurement, int]:
    await scenarios.preload(dsn, messages)
    traced = variant.startswith("metrics+traces")
    # Every variant's messages carry the headers, so the database does the same work.
    await _add_trace_context(dsn, 10 if variant.endswith("10%") else 1)
    hook = ConsumeMetrics(QUEUE, registry=CollectorRegistry()) if variant != "neither" else None
    exporter = _Drop()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    if traced:
        pgqrs.otel.instrument(tracer_provider=provider)
    try:
        async with Consumer(dsn, QUEUE, "bench-consumer", 0, visibility_timeout=30) as consumer:
            (warm,) = await consumer.dequeue()  # register and warm up on one message
            await consumer.archive(warm.id)
            with scenarios.Clock() as clock:
                handler = _waiting(handler_ms / 1000) if handler_ms else _noop
                handled = await consumer.consume(handler, batch_size=batch, concurrency=batch,
                                                 poll_interval=0.01, stop_when_idle=True,
                                                 on_settled=hook)
                provider.force_flush()  # the spans' export is part of the cost
    finally:
        pgqrs.otel.uninstrument()
        provider.shutdown()
    if handled != messages - 1:
        raise RuntimeError(f"{variant}: handled {handled} of {messages - 1}")
    return scenarios.Measurement(handled, clock.wall, clock.cpu), exporter.exported


async def study(dsn: str, *, messages: int, rounds: int, batch: int,
                handler_ms: float) -> None:
    databases = Databases(dsn)
    await databases.create_template()
    results: dict[str, list[scenarios.Measurement]] = {v: [] for v in VARIANTS}
    try:
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for variant in order:
                async with databases.fresh() as fresh:
                    m, spans = await run_once(fresh, variant, messages=messages, batch=batch,
                                              handler_ms=handler_ms)
                results[variant].append(m)
                print(f"round {r + 1} {variant:>18}: {m.rate:8.0f} msg/s, "
                      f"{m.cpu_per_message * 1e6:6.1f} µs CPU/msg, {spans} spans", flush=True)
    finally:
        await databases.drop_template()
    base = statistics.median(m.rate for m in results["neither"])
    base_cpu = statistics.median(m.cpu_per_message for m in results["neither"])
    print(f"\nmedian of {rounds} rounds, {messages} messages, batch {batch}, "
          f"handler {handler_ms} ms:")
    for variant in VARIANTS:
        rate = statistics.median(m.rate for m in results[variant])
        cpu = statistics.median(m.cpu_per_message for m in results[variant])
        print(f"  {variant:>18}: {rate:8.0f} msg/s ({rate / base:6.1%} of neither), "
              f"{cpu * 1e6:6.1f} µs CPU/msg ({(cpu - base_cpu) * 1e6:+5.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--handler-ms", type=float, default=0.0,
                        help="the handler awaits this long (0: returns at once)")
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
                          batch=args.batch, handler_ms=args.handler_ms))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
