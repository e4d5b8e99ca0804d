"""``pgqrs.otel``: one trace from the enqueueing request to the handler, in one process."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from pgqrs import Admin, Consumer, NewMessage, Producer, QueueMessage, Settled, ValidationError
from pgqrs.prometheus import ConsumeMetrics

from .otel import Traced, as_json


async def _drain(dsn: str, handler, **options) -> int:  # type: ignore[no-untyped-def]
    async with Consumer(dsn, "work", "consumer", 1) as consumer:
        return await consumer.consume(handler, backoff_base=0, stop_when_idle=True,
                                      **options)


async def _headers(dsn: str) -> list[dict[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT headers::text FROM pgqrs_messages ORDER BY id")
    finally:
        await conn.close()
    return [json.loads(r[0]) if r[0] is not None else {} for r in rows]


async def test_a_web_request_trace_reaches_the_handler(dsn: str, traced: Traced) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    with traced.tracer.start_as_current_span("POST /signup", kind=SpanKind.SERVER) as web:
        async with Producer(dsn, "work", "web", 1) as producer:
            message_id = await producer.enqueue({"to": "ada"}, headers={"tenant": "acme"})
    (stored,) = await _headers(dsn)
    assert stored["tenant"] == "acme"  # the caller's headers are kept, the context added
    assert stored["traceparent"].split("-")[1] == f"{web.get_span_context().trace_id:032x}"

    seen: list[tuple[int, int, str]] = []

    async def handler(message: QueueMessage) -> None:
        ctx = trace.get_current_span().get_span_context()
        seen.append((ctx.trace_id, ctx.span_id, message.headers["tenant"]))

    assert await _drain(dsn, handler) == 1

    (send,) = traced.spans("send work")
    (process,) = traced.spans("process work")
    trace_id = web.get_span_context().trace_id
    # One trace: request -> send -> process, and the handler ran inside "process".
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert send.parent is not None and send.parent.span_id == web.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert {send.context.trace_id, process.context.trace_id} == {trace_id}
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert seen == [(trace_id, process.context.span_id, "acme")]
    assert dict(send.attributes or {}) == {
        "messaging.system": "pgqrs", "messaging.operation.type": "send",
        "messaging.operation.name": "send", "messaging.destination.name": "work",
        "messaging.message.id": str(message_id)}
    assert dict(process.attributes or {}) == {
        "messaging.system": "pgqrs", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": "work",
        "messaging.message.id": str(message_id), "pgqrs.message.read_ct": 1,
        "pgqrs.outcome": "succeeded"}
    assert process.status.status_code is StatusCode.UNSET
    # The span ends when the delivery is settled (after the archive), not before the handler.
    assert process.end_time is not None and process.start_time is not None
    assert process.end_time >= process.start_time


async def test_a_failing_handler_records_the_exception_and_each_outcome(
        dsn: str, traced: Traced) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work", max_read_ct=3)
    async with Producer(dsn, "work", "web", 1) as producer:
        await producer.enqueue({"fail": True})

    async def handler(message: QueueMessage) -> None:
        raise ValueError(f"attempt {message.read_ct} failed")

    assert await _drain(dsn, handler) == 0
    (send,) = traced.spans("send work")
    processes = sorted(traced.spans("process work"),
                       key=lambda s: (s.attributes or {})["pgqrs.message.read_ct"])
    assert [(s.attributes or {})["pgqrs.outcome"] for s in processes] == [
        "retried", "retried", "dead_lettered"]
    for attempt, span in enumerate(processes, start=1):
        assert span.context.trace_id == send.context.trace_id
        assert span.parent is not None and span.parent.span_id == send.context.span_id
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == f"ValueError: attempt {attempt} failed"
        exception = span.events[0]
        assert exception.name == "exception"
        assert (exception.attributes or {})["exception.type"] == "ValueError"
        assert (span.attributes or {})["error.type"] == "ValueError"
    assert [e.name for e in processes[-1].events] == ["exception", "dead_lettered"]
    assert (processes[0].attributes or {})["pgqrs.retry_delay"] == 0.0
    assert "pgqrs.retry_delay" not in (processes[-1].attributes or {})


async def test_a_batch_is_one_send_span_and_a_process_span_per_message(
        dsn: str, traced: Traced) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    async with Producer(dsn, "work", "web", 1) as producer:
        await producer.enqueue_batch([
            {"n": 1}, {"n": 2},
            NewMessage({"n": 3}, headers={"own": "yes"}),  # its own headers, context added
        ], headers={"batch": "yes"})
    stored = await _headers(dsn)
    assert [sorted(h) for h in stored] == [["batch", "traceparent"], ["batch", "traceparent"],
                                          ["own", "traceparent"]]
    assert await _drain(dsn, lambda m: asyncio.sleep(0)) == 3
    (send,) = traced.spans("send work")
    assert (send.attributes or {})["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in (send.attributes or {})
    processes = traced.spans("process work")
    assert len(processes) == 3
    assert {s.parent.span_id for s in processes if s.parent} == {send.context.span_id}


async def test_a_context_the_caller_set_is_kept_whole(dsn: str, traced: Traced) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    forwarded = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with Producer(dsn, "work", "web", 1) as producer:
        await producer.enqueue({"n": 1}, headers={"traceparent": forwarded})
    assert await _headers(dsn) == [{"traceparent": forwarded}]
    assert await _drain(dsn, lambda m: asyncio.sleep(0)) == 1
    (process,) = traced.spans("process work")
    # The handler's span continues the forwarded trace, not the send span's.
    assert f"{process.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert process.parent is not None and f"{process.parent.span_id:016x}" == (
        "b7ad6b7169203331")


async def test_composes_with_the_callers_hooks_and_prometheus(dsn: str,
                                                              traced: Traced) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    async with Producer(dsn, "work", "web", 1) as producer:
        await producer.enqueue_batch([{"fail": False}, {"fail": True}])
    registry = CollectorRegistry()
    metrics = ConsumeMetrics("work", registry=registry)
    settled: list[Settled] = []
    inside: list[bool] = []

    def on_settled(event: Settled) -> None:
        settled.append(event)
        metrics(event)

    class Around:
        def __init__(self, message: QueueMessage) -> None:
            self.message = message

        async def __aenter__(self) -> None:
            # The caller's wrapper runs inside the delivery's span.
            inside.append(trace.get_current_span().is_recording())

        async def __aexit__(self, *exc: object) -> bool:
            return True  # swallows the failure: the handler counts as succeeded

    async def handler(message: QueueMessage) -> None:
        if message.payload["fail"]:
            raise RuntimeError("swallowed")

    assert await _drain(dsn, handler, on_settled=on_settled, around_handler=Around) == 2
    assert inside == [True, True]
    assert sorted(str(e.outcome) for e in settled) == ["succeeded", "succeeded"]
    assert registry.get_sample_value("pgqrs_consumed_total",
                                     {"queue": "work", "outcome": "succeeded"}) == 2
    spans = traced.spans("process work")
    assert [s.status.status_code for s in spans] == [StatusCode.UNSET] * 2


async def test_not_instrumented_adds_nothing(dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    probe = Traced()  # an SDK exists in the process, but pgqrs was never instrumented
    with probe.tracer.start_as_current_span("request"):
        async with Producer(dsn, "work", "web", 1) as producer:
            await producer.enqueue({"n": 1}, headers={"tenant": "acme"})
            await producer.enqueue({"n": 2})
    assert await _headers(dsn) == [{"tenant": "acme"}, {}]
    assert await _drain(dsn, lambda m: asyncio.sleep(0)) == 2
    assert [s.name for s in probe.spans()] == ["request"]
    assert as_json(probe.spans()[0])["kind"] == "INTERNAL"


async def test_a_wrapper_that_fails_to_enter_is_a_failed_delivery(dsn: str,
                                                                 traced: Traced) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work", max_read_ct=1)
    async with Producer(dsn, "work", "web", 1) as producer:
        await producer.enqueue({"n": 1})

    class Broken:
        def __init__(self, message: QueueMessage) -> None:
            pass

        async def __aenter__(self) -> None:
            raise ConnectionError("no session")

        async def __aexit__(self, *exc: object) -> None:
            raise AssertionError("never entered")

    called: list[QueueMessage] = []
    assert await _drain(dsn, called.append, around_handler=Broken) == 0
    assert called == []
    (process,) = traced.spans("process work")
    assert (process.attributes or {})["pgqrs.outcome"] == "dead_lettered"
    assert process.status.status_code is StatusCode.ERROR
    assert (process.attributes or {})["error.type"] == "ConnectionError"
    # Nothing leaks into the loop's context: the next span is a root again.
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_hooks_that_are_not_callable_are_still_refused(dsn: str, traced: Traced) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    async with Consumer(dsn, "work", "consumer", 1) as consumer:
        for hooks in ({"on_settled": 42}, {"around_handler": "span"}):
            with pytest.raises(ValidationError, match="must be callable"):
                await consumer.consume(lambda m: asyncio.sleep(0), stop_when_idle=True,
                                       **hooks)  # type: ignore[arg-type]
