"""One side of the two-process trace test: ``python otel_process.py produce|consume DSN``.

Each process configures its own OpenTelemetry SDK (global provider, in-memory exporter),
instruments pgqrs, does its side of the work, and prints its finished spans as JSON on
stdout (the last line), the way an exporter would ship them to a collector.
"""

from __future__ import annotations

import asyncio
import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pgqrs.otel
from pgqrs import Consumer, Producer, QueueMessage


async def produce(dsn: str) -> None:
    tracer = trace.get_tracer("web")
    with tracer.start_as_current_span("POST /orders", kind=trace.SpanKind.SERVER):
        async with Producer(dsn, "orders", "web", 1) as producer:
            await producer.enqueue({"order": 42})


async def consume(dsn: str) -> None:
    async def handler(message: QueueMessage) -> None:
        # A span of the application's own, inside the handler: part of the same trace.
        with trace.get_tracer("worker").start_as_current_span("charge card"):
            await asyncio.sleep(0)

    async with Consumer(dsn, "orders", "worker", 1) as consumer:
        assert await consumer.consume(handler, stop_when_idle=True) == 1


def main() -> None:
    side, dsn = sys.argv[1], sys.argv[2]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    pgqrs.otel.instrument()
    asyncio.run(produce(dsn) if side == "produce" else consume(dsn))
    provider.shutdown()
    spans = []
    for span in exporter.get_finished_spans():
        ctx, parent = span.get_span_context(), span.parent
        assert ctx is not None
        spans.append({
            "name": span.name, "kind": span.kind.name, "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
            "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
            "links": [f"{link.context.span_id:016x}" for link in span.links],
            "attributes": dict(span.attributes or {}),
        })
    print(json.dumps(spans))


if __name__ == "__main__":
    main()
