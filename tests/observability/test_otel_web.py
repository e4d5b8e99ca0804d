"""A trace started by a web request that enqueues reaches the consumer's handler.

A real HTTP request (httpx over ASGI) to a FastAPI app: a middleware does what the
OpenTelemetry ASGI instrumentation does (continue the caller's ``traceparent`` in a
SERVER span around the request), and the endpoint enqueues. The consumer's span and a
span the handler opens are in the request's trace, under the request's span.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI, Request, Response
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from pgqrs import Admin, Consumer, Producer, QueueMessage

from .otel import Traced

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def _app(dsn: str, traced: Traced) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def server_span(request: Request,
                          call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        caller = propagate.extract(dict(request.headers))
        with traced.tracer.start_as_current_span(f"{request.method} {request.url.path}",
                                                 context=caller, kind=SpanKind.SERVER):
            return await call_next(request)

    @app.post("/signup")
    async def signup(body: dict[str, str]) -> dict[str, int]:
        async with Producer(dsn, "emails", "web", 1) as producer:
            return {"id": await producer.enqueue({"to": body["email"]})}

    return app


async def test_a_web_requests_trace_contains_the_handlers_span(dsn: str,
                                                                traced: Traced) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("emails")
    transport = httpx.ASGITransport(app=_app(dsn, traced))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.post(
            "/signup", json={"email": "ada@example.com"},
            headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    assert response.status_code == 200, response.text
    message_id = response.json()["id"]

    async def send_email(message: QueueMessage) -> None:
        with trace.get_tracer("worker", tracer_provider=traced.provider).start_as_current_span(
                "smtp send"):
            pass

    async with Consumer(dsn, "emails", "mailer", 1) as consumer:
        assert await consumer.consume(send_email, stop_when_idle=True) == 1

    (request,) = traced.spans("POST /signup")
    (send,) = traced.spans("send emails")
    (process,) = traced.spans("process emails")
    (smtp,) = traced.spans("smtp send")
    # request -> send -> process -> the handler's own span: one trace, the caller's.
    assert {f"{s.context.trace_id:032x}" for s in (request, send, process, smtp)} == {
        CALLER_TRACE}
    assert request.parent is not None and f"{request.parent.span_id:016x}" == CALLER_SPAN
    assert send.parent is not None and send.parent.span_id == request.context.span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert smtp.parent is not None and smtp.parent.span_id == process.context.span_id
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == str(message_id)
