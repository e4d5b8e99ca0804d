"""What OpenTelemetry tracing (and Prometheus metrics) costs the consume loop.

Usage (from the repository root)::

    python -m benchmarks.studies.tracing_overhead [--messages 10000] [--rounds 3]
        [--batch 50] [--handler-ms 0 1 10] [--gc-off] [--dsn URL] [--pg-tmpdir /dev/shm]
        [--no-durable]

For each handler (a no-op, or one that awaits ``--handler-ms`` milliseconds, as a handler
waiting on I/O does), each round drains a fresh queue of ``messages`` preloaded messages
with ``Consumer.consume`` (``batch_size=concurrency=batch``, ``stop_when_idle``) six ways,
in an order that rotates from round to round:

- ``neither``: no hook, pgqrs not instrumented;
- ``metrics``: ``ConsumeMetrics(...)`` as ``on_settled`` and its ``claimed`` as
  ``on_claimed``;
- ``sdk by hand``: no pgqrs tracing; the same spans written directly against the SDK on
  the loop's public hooks (``around_handler`` starts and attaches the span,
  ``on_settled`` ends it), without any shortcut: the SDK's own floor inside the loop;
- ``traces`` / ``metrics+traces``: ``pgqrs.otel.instrument()`` with the OpenTelemetry
  SDK as a deployment sets it up: ``BatchSpanProcessor`` (spans are exported from its
  thread, in batches) and an exporter that drops what it gets (the export's own cost is
  the exporter's, not pgqrs's), sampler ``ParentBased(ALWAYS_ON)``; every message carries
  a sampled ``traceparent``, as if its producer was traced: every delivery records a span;
- ``sdk by hand 10%`` / ``traces 10%`` / ``metrics+traces 10%``: sampler
  ``ParentBased(TraceIdRatioBased(0.1))`` and one message in ten sampled by its producer,
  the others carrying an unsampled ``traceparent`` (the usual production setting).

The headers are written (and the table vacuumed) before the clock starts, in every variant,
so the database's work is the same in all. After each traced run, the same messages also
go through a bare OpenTelemetry SDK loop in the same process (no pgqrs, no database, no
event loop): what pgqrs asks of the SDK per delivery (extract the context from the
headers, start a CONSUMER span with the same attributes, link and parent, attach and
detach it, set the outcome, end it) with the same sampler, processor and exporter: the
"tight floor". ``traces`` minus ``sdk by hand`` is pgqrs's share; ``sdk by hand`` minus
``neither`` is the SDK's. ``--gc-off`` turns the garbage collector off while timing, to
show its share (spans are many small objects, held until exported).

It prints each run and, per variant, the median rate, the median client CPU per message,
the difference to ``neither`` and, for traced variants, the SDK floor. A no-op handler is
the worst case for the relative cost. Not a test and not timed in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind
from prometheus_client import CollectorRegistry

import pgqrs.otel
from benchmarks import scenarios
from benchmarks.server import QUEUE, Databases, server
from pgqrs import Consumer, QueueMessage, Settled
from pgqrs.prometheus import ConsumeMetrics

VARIANTS = ("neither", "metrics", "sdk by hand", "traces", "metrics+traces",
            "sdk by hand 10%", "traces 10%", "metrics+traces 10%")
TRACED = ("sdk by hand", "traces")
"""Variants whose deliveries get spans (the SDK's floor is measured after each run)."""


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


def _sampler(variant: str) -> Sampler:
    return ParentBased(TraceIdRatioBased(0.1) if variant.endswith("10%") else ALWAYS_ON)


def _provider(variant: str) -> tuple[TracerProvider, _Drop]:
    exporter = _Drop()
    provider = TracerProvider(sampler=_sampler(variant))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def _start(tracer: trace.Tracer, message: QueueMessage) -> trace.Span:
    """What pgqrs asks of the SDK when a handler starts, written out with no shortcut."""
    parent = propagate.extract(message.headers, context=_EMPTY)
    produced = trace.get_current_span(parent).get_span_context()
    return tracer.start_span(
        f"process {QUEUE}", context=parent, kind=SpanKind.CONSUMER,
        links=[Link(produced)] if produced.is_valid else None,
        attributes={"messaging.system": "pgqrs", "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": QUEUE,
                    "messaging.message.id": str(message.id),
                    "pgqrs.message.read_ct": message.read_ct})


_EMPTY = otel_context.Context()


def sdk_floor(variant: str, messages: Sequence[QueueMessage], *, gc_off: bool) -> float:
    """CPU seconds per message of the bare SDK doing what pgqrs asks of it, in a tight loop.

    No pgqrs, no database, no event loop: extract, start, attach, detach, set the
    outcome, end, with the variant's sampler, processor and exporter.
    """
    provider, exporter = _provider(variant)
    tracer = provider.get_tracer("floor")
    recorded = 0
    gc.collect()
    if gc_off:
        gc.disable()
    started = time.process_time()
    try:
        for message in messages:
            span = _start(tracer, message)
            token = otel_context.attach(trace.set_span_in_context(span))
            otel_context.detach(token)
            span.set_attribute("pgqrs.outcome", "succeeded")
            recorded += span.is_recording()
            span.end()
        provider.force_flush()
        cpu = (time.process_time() - started) / len(messages)
    finally:
        gc.enable()
        provider.shutdown()
    if exporter.exported != recorded:  # a full queue drops spans: the floor would be low
        raise RuntimeError(f"the SDK exported {exporter.exported} of {recorded} spans")
    return cpu


class _BySdk:
    """The same spans written by hand on the loop's public hooks, pgqrs not instrumented.

    What an application would write without ``pgqrs.otel``: the SDK's floor inside the
    consume loop (its code interleaved with the loop's and the driver's, its spans held
    across awaits), to compare the instrumented loop with.
    """

    def __init__(self, tracer: trace.Tracer, then: Any) -> None:
        self.tracer = tracer
        self.then = then
        self.open: dict[int, trace.Span] = {}

    def around(self, message: QueueMessage) -> _BySdkScope:
        return _BySdkScope(self, message)

    def settled(self, event: Settled) -> None:
        span = self.open.pop(id(event.message))
        span.set_attribute("pgqrs.outcome", str(event.outcome))
        span.end()
        self.then(event)


class _BySdkScope:
    __slots__ = ("message", "sdk", "token")

    def __init__(self, sdk: _BySdk, message: QueueMessage) -> None:
        self.sdk, self.message = sdk, message

    async def __aenter__(self) -> None:
        span = self.sdk.open[id(self.message)] = _start(self.sdk.tracer, self.message)
        self.token = otel_context.attach(trace.set_span_in_context(span))

    async def __aexit__(self, *exc: object) -> None:
        otel_context.detach(self.token)


async def run_once(dsn: str, variant: str, *, messages: int, batch: int,
                   handler_ms: float = 0.0, gc_off: bool = False
                   ) -> tuple[scenarios.Measurement, int, float | None]:
    await scenarios.preload(dsn, messages)
    traced = variant.startswith(TRACED) or "+traces" in variant
    by_hand = variant.startswith("sdk by hand")
    # Every variant's messages carry the headers, so the database does the same work.
    await _add_trace_context(dsn, 10 if variant.endswith("10%") else 1)
    metrics = (ConsumeMetrics(QUEUE, registry=CollectorRegistry())
               if variant.startswith("metrics") else None)
    consumed: list[QueueMessage] = []

    def settled(event: Settled) -> None:  # keeps the messages for the SDK floor
        consumed.append(event.message)
        if metrics is not None:
            metrics(event)

    hook: Any = settled if traced else metrics
    around = None
    provider, exporter = _provider(variant)
    if by_hand:
        sdk = _BySdk(provider.get_tracer("by hand"), settled)
        hook, around = sdk.settled, sdk.around
    elif traced:
        pgqrs.otel.instrument(tracer_provider=provider)
    try:
        async with Consumer(dsn, QUEUE, "bench-consumer", 0, visibility_timeout=30) as consumer:
            (warm,) = await consumer.dequeue()  # register and warm up on one message
            await consumer.archive(warm.id)
            handler = _waiting(handler_ms / 1000) if handler_ms else _noop
            with scenarios.Clock() as clock:
                if gc_off:
                    gc.disable()
                try:
                    handled = await consumer.consume(
                        handler, batch_size=batch, concurrency=batch, poll_interval=0.01,
                        stop_when_idle=True, on_settled=hook, around_handler=around,
                        on_claimed=metrics.claimed if metrics is not None else None)
                    provider.force_flush()  # the spans' export is part of the cost
                finally:
                    gc.enable()
    finally:
        pgqrs.otel.uninstrument()
        provider.shutdown()
    if handled != messages - 1:
        raise RuntimeError(f"{variant}: handled {handled} of {messages - 1}")
    floor = sdk_floor(variant, consumed, gc_off=gc_off) if traced else None
    return scenarios.Measurement(handled, clock.wall, clock.cpu), exporter.exported, floor


async def study(dsn: str, *, messages: int, rounds: int, batch: int,
                handlers: Sequence[float], gc_off: bool) -> None:
    databases = Databases(dsn)
    await databases.create_template()
    try:
        for handler_ms in handlers:
            await _study_handler(databases, messages=messages, rounds=rounds, batch=batch,
                                 handler_ms=handler_ms, gc_off=gc_off)
    finally:
        await databases.drop_template()


async def _study_handler(databases: Databases, *, messages: int, rounds: int, batch: int,
                         handler_ms: float, gc_off: bool) -> None:
    results: dict[str, list[scenarios.Measurement]] = {v: [] for v in VARIANTS}
    floors: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant in order:
            async with databases.fresh() as fresh:
                m, spans, floor = await run_once(fresh, variant, messages=messages,
                                                 batch=batch, handler_ms=handler_ms,
                                                 gc_off=gc_off)
            results[variant].append(m)
            if floor is not None:
                floors[variant].append(floor)
            print(f"handler {handler_ms} ms round {r + 1} {variant:>18}: {m.rate:8.0f} msg/s,"
                  f" {m.cpu_per_message * 1e6:6.1f} µs CPU/msg, {spans} spans"
                  + (f", SDK floor {floor * 1e6:5.1f} µs" if floor is not None else ""),
                  flush=True)
    base = statistics.median(m.rate for m in results["neither"])
    base_cpu = statistics.median(m.cpu_per_message for m in results["neither"])
    print(f"\nmedian of {rounds} rounds, {messages} messages, batch {batch}, "
          f"handler {handler_ms} ms{', gc off' if gc_off else ''}:")
    for variant in VARIANTS:
        rate = statistics.median(m.rate for m in results[variant])
        cpu = statistics.median(m.cpu_per_message for m in results[variant])
        line = (f"  {variant:>18}: {rate:8.0f} msg/s ({rate / base:6.1%} of neither), "
                f"{cpu * 1e6:6.1f} µs CPU/msg ({(cpu - base_cpu) * 1e6:+5.1f})")
        if floors[variant]:
            line += f", SDK floor {statistics.median(floors[variant]) * 1e6:5.1f} µs"
        print(line)
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--handler-ms", type=float, nargs="+", default=[0.0, 1.0, 10.0],
                        help="handlers that await this long (0: returns at once)")
    parser.add_argument("--gc-off", action="store_true",
                        help="garbage collector off while timing (shows its share)")
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
                          batch=args.batch, handlers=args.handler_ms, gc_off=args.gc_off))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
