"""``pgqrs.otel`` and sampling: a delivery whose producer was not sampled costs no span.

With the SDK's ``ParentBased`` sampler (the default, and the usual production setting) a
message carrying an unsampled ``traceparent`` gets no span of pgqrs's: the producer's
context is current in the handler as it is. A sampler that samples regardless of the
parent still gets its span.
"""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

import pgqrs.otel
from pgqrs import Admin, Consumer, Producer, QueueMessage

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"


@pytest.mark.parametrize(("sampler", "spans", "inner"), [
    (ParentBased(ALWAYS_ON), {"sampled", "untraced"}, 2),
    (ParentBased(TraceIdRatioBased(1.0)), {"sampled", "untraced"}, 2),
    (ALWAYS_ON, {"sampled", "unsampled", "untraced"}, 3),
    # Spans under an unsampled local parent are kept: our span is what the handler's own
    # spans hang under, so it is made (unrecorded: its remote parent is not sampled).
    (ParentBased(ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON), {"sampled", "untraced"}, 3),
], ids=["parent-based", "parent-based-ratio", "always-on", "keeps-local-unsampled"])
async def test_an_unsampled_producer_gets_a_span_only_if_the_sampler_wants_one(
        dsn: str, sampler: Sampler, spans: set[str], inner: int) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    async with Producer(dsn, "work", "web", 1) as producer:  # not instrumented yet
        for name, headers in (("sampled", {"traceparent": SAMPLED}),
                              ("unsampled", {"traceparent": UNSAMPLED}),
                              ("untraced", None)):
            await producer.enqueue({"name": name}, headers=headers)

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pgqrs.otel.instrument(tracer_provider=provider)
    seen: dict[str, tuple[str, bool]] = {}

    async def handler(message: QueueMessage) -> None:
        ctx = trace.get_current_span().get_span_context()
        seen[message.payload["name"]] = (f"{ctx.trace_id:032x}", ctx.trace_flags.sampled)
        with provider.get_tracer("app").start_as_current_span("inner"):
            pass  # the handler's own span: kept or dropped by the sampler, not by pgqrs

    try:
        async with Consumer(dsn, "work", "consumer", 1) as consumer:
            assert await consumer.consume(handler, stop_when_idle=True) == 3
    finally:
        pgqrs.otel.uninstrument()
        provider.shutdown()

    finished = exporter.get_finished_spans()
    assert sum(s.name == "inner" for s in finished) == inner
    recorded = {s.attributes["messaging.message.id"]: s for s in finished
                if s.name != "inner" and s.attributes is not None}
    assert len(recorded) == len(spans)
    # Each handler ran in its producer's trace, sampled or not, as the producer decided.
    assert seen["sampled"] == (SAMPLED.split("-")[1], True)
    assert seen["unsampled"][0] == UNSAMPLED.split("-")[1]
    assert seen["unsampled"][1] is ("unsampled" in spans)
    for span in recorded.values():
        assert span.attributes is not None
        assert span.attributes["pgqrs.outcome"] == "succeeded"
