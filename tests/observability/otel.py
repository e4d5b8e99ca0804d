"""Helpers of the OpenTelemetry tests: an SDK provider with an in-memory exporter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pgqrs.otel


class Traced:
    """An SDK provider that keeps finished spans in memory, installed into pgqrs."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans()
                if name is None or s.name == name]


@pytest.fixture
def traced() -> Iterator[Traced]:
    """pgqrs instrumented with an in-memory SDK provider (not the global one)."""
    traced = Traced()
    pgqrs.otel.instrument(tracer_provider=traced.provider)
    try:
        yield traced
    finally:
        pgqrs.otel.uninstrument()
        traced.provider.shutdown()


def as_json(span: ReadableSpan) -> dict[str, Any]:
    """What the multi-process test passes between processes: ids as hex, attributes."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "links": [f"{link.context.trace_id:032x}/{link.context.span_id:016x}"
                  for link in span.links],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [e.name for e in span.events],
    }


def dumps(spans: list[ReadableSpan]) -> str:
    return json.dumps([as_json(s) for s in spans])
