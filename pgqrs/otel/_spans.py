"""Producer and consumer spans, installed into the clients through ``pgqrs._tracing``.

Semantic conventions: OpenTelemetry messaging spans, v1.27 and later (``send`` replaced
``publish``; ``messaging.operation.type`` replaced ``messaging.operation``). pgqrs is not
in the conventions' list of systems, so ``messaging.system`` is ``"pgqrs"`` (custom
values are allowed) and its own attributes are under ``pgqrs.``.

The consumer span is a child of the producer's span AND carries a link to it. The
conventions require the link (a batch receive cannot have several parents) and allow the
parent when a span processes a single message, which is always the case here: each
handler call is one message. The parent is what puts the handler in the web request's
trace (one trace from request to handler, which is what a trace viewer shows); the link
is what tools following the conventions look for.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, Status, StatusCode

from pgqrs import __version__, _tracing
from pgqrs.types import NewMessage, Outcome, QueueMessage, Settled

SYSTEM = "pgqrs"
"""The ``messaging.system`` attribute of every pgqrs span."""

_STAND_INS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
"""The API's providers when no SDK is configured: their spans record nothing."""

_EMPTY = otel_context.Context()
"""The context of a message without headers (contexts are immutable: one is enough)."""

_OPEN_LIMIT = 100_000
"""Most deliveries one consume loop may have between handler start and settle; a guard."""

_DROPS_UNSAMPLED = ("remoteParentNotSampled:AlwaysOffSampler",
                    "localParentNotSampled:AlwaysOffSampler")
"""In an SDK sampler's description: a parent that is not sampled gets no span.

Both halves must hold: skipping our span makes the handler's own spans children of the
producer's (remote) context instead of our (local) span, which must change nothing.

The SDK's default sampler (``ParentBased``, whatever its root) says so, and
``Sampler.get_description()`` is public API, so no SDK internals are read.
"""


def context_of(message: QueueMessage) -> otel_context.Context:
    """The trace context a message carries in its headers (empty if none).

    For messages taken with ``Consumer.dequeue`` (the consume loop does this itself)::

        with tracer.start_as_current_span("work", context=pgqrs.otel.context_of(message),
                                          kind=SpanKind.CONSUMER):
            ...

    Args:
        message: a message read from the queue.
    """
    return _extract(message.headers, propagate.get_global_textmap().fields)


def _extract(headers: Mapping[str, str] | None, fields: Any) -> otel_context.Context:
    """The context in ``headers``; ``fields``: the header names the propagator reads."""
    if not headers or fields.isdisjoint(headers):
        return _EMPTY  # nothing to parse (the propagator would find nothing): a new trace
    return propagate.extract(headers, context=_EMPTY)


class _Send:
    """One traced enqueue: the PRODUCER span and the headers it adds."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def inject(self, headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self.span))
        if not carrier:  # no SDK, or not sampled with nothing to propagate
            return headers
        if headers is None or (isinstance(headers, Mapping) and not headers):
            return carrier
        if not isinstance(headers, Mapping):
            return headers  # as given: the enqueue's validation rejects it
        if not propagate.get_global_textmap().fields.isdisjoint(headers):
            # The caller forwards a context of its own (traceparent, tracestate, baggage):
            # keep it whole rather than mixing ours into it.
            return headers
        return {**carrier, **headers}  # the caller's headers win

    def inject_each(self, items: Sequence[Any]) -> Sequence[Any]:
        # ``NewMessage`` items with headers of their own do not take the batch's.
        return [dataclasses.replace(item, headers=self.inject(item.headers))
                if isinstance(item, NewMessage) and item.headers is not None else item
                for item in items]

    def sent(self, ids: Sequence[int]) -> None:
        if len(ids) == 1:
            self.span.set_attribute("messaging.message.id", str(ids[0]))


class _Consume:
    """The spans of one ``consume()`` run: opened around the handler, ended when settled.

    Per delivery the SDK's own work (parse the ``traceparent``, sample, start and end a
    span with its attributes and link) is most of the cost; what pgqrs adds is kept to
    what cannot be done once per loop: the constant attributes, the propagator's header
    names and whether the sampler drops unsampled parents are looked up here, once.
    """

    def __init__(self, tracer: trace.Tracer, queue: str, around: Any, settled: Any,
                 provider: trace.TracerProvider) -> None:
        self.tracer = tracer
        self.name = f"process {queue}"
        self.user_around = around
        self.user_settled = settled
        self.fields = propagate.get_global_textmap().fields
        self.constant = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
        }
        # A message whose producer was not sampled gets no span of ours when the sampler
        # would drop it anyway (ParentBased: the usual production setting): the producer's
        # context is made current as it is, so the handler's own spans and calls stay in
        # its (unsampled) trace, for the cost of parsing the header.
        sampler = getattr(provider, "sampler", None)
        describe = getattr(sampler, "get_description", None)
        self.skip_unsampled = callable(describe) and all(
            part in str(describe()) for part in _DROPS_UNSAMPLED)
        # (message id, read_ct) -> its span: one entry per delivery whose handler started.
        self.open: dict[tuple[int, int], Span] = {}

    def start(self, message: QueueMessage) -> Span:
        parent = _extract(message.headers, self.fields)
        links = None
        if parent is not _EMPTY:
            produced = trace.get_current_span(parent).get_span_context()
            if produced.is_valid:
                if self.skip_unsampled and not produced.trace_flags.sampled:
                    return NonRecordingSpan(produced)
                links = [Link(produced)]
        attributes: dict[str, Any] = dict(self.constant)
        attributes["messaging.message.id"] = str(message.id)
        attributes["pgqrs.message.read_ct"] = message.read_ct
        return self.tracer.start_span(self.name, context=parent, kind=SpanKind.CONSUMER,
                                      links=links, attributes=attributes)

    def around_handler(self, message: QueueMessage) -> _HandlerScope:
        return _HandlerScope(self, message)

    def on_settled(self, event: Settled) -> Any:
        message = event.message
        span = self.open.pop((message.id, message.read_ct), None)
        if span is None:  # stopped before its handler started: still one span per delivery
            span = self.start(message)
        if span.is_recording():  # an unsampled delivery's span records nothing: skip it all
            span.set_attribute("pgqrs.outcome", str(event.outcome))
            if event.delay is not None:
                span.set_attribute("pgqrs.retry_delay", event.delay)
            if event.outcome is Outcome.DEAD_LETTERED:
                span.add_event("dead_lettered")
            span.end()
        if self.user_settled is not None:
            return self.user_settled(event)
        return None


class _HandlerScope:
    """Makes the delivery's span current in the handler's task while the handler runs."""

    __slots__ = ("consume", "message", "span", "token", "user")

    def __init__(self, consume: _Consume, message: QueueMessage) -> None:
        self.consume = consume
        self.message = message
        self.user: contextlib.AbstractAsyncContextManager[object] | None = None

    async def __aenter__(self) -> None:
        consume, message = self.consume, self.message
        self.span = span = consume.start(message)
        if len(consume.open) < _OPEN_LIMIT:
            consume.open[(message.id, message.read_ct)] = span
        self.token = otel_context.attach(trace.set_span_in_context(span))
        if consume.user_around is not None:
            try:  # the caller's wrapper runs inside the span
                self.user = consume.user_around(message)
                await self.user.__aenter__()
            except BaseException as exc:
                otel_context.detach(self.token)
                _failed(span, exc)  # the loop counts it as the handler failing
                raise

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if self.user is not None and await self.user.__aexit__(kind, exc, tb):
                exc = None  # the user's wrapper swallowed it: the handler succeeded
        except BaseException as raised:
            exc = raised  # the caller's wrapper raised on the way out: a failure too
            raise
        finally:
            otel_context.detach(self.token)
            _failed(self.span, exc)
        return exc is None and kind is not None


def _failed(span: Span, exc: BaseException | None) -> None:
    """Record a handler's exception on its span (a cancellation is not a failure)."""
    if isinstance(exc, Exception) and span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.set_attribute("error.type", type(exc).__qualname__)


class _Tracing:
    """What ``instrument()`` installs as ``pgqrs._tracing.hook``."""

    def __init__(self, tracer_provider: trace.TracerProvider | None) -> None:
        self.provider = tracer_provider
        self.tracer = trace.get_tracer("pgqrs", __version__, tracer_provider=tracer_provider)

    def recording(self) -> bool:
        """False while there is no SDK: the global provider is still the API's stand-in.

        One global read and an ``isinstance``: with no SDK configured, instrumented
        clients take the untraced path (no span, no header, nothing per message).
        """
        provider = self.provider or trace.get_tracer_provider()
        return not isinstance(provider, _STAND_INS)

    def sending(self, queue: str, count: int
                ) -> contextlib.AbstractContextManager[_tracing.SendScope]:
        if not self.recording():
            return _tracing.UNTRACED
        return self._send_span(queue, count)

    @contextlib.contextmanager
    def _send_span(self, queue: str, count: int) -> Iterator[_Send]:
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": queue,
        }
        if count > 1:  # the conventions set it on batches only
            attributes["messaging.batch.message_count"] = count
        with self.tracer.start_as_current_span(f"send {queue}", kind=SpanKind.PRODUCER,
                                               attributes=attributes) as span:
            try:
                yield _Send(span)
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                raise

    def consuming(self, queue: str, around_handler: Any, on_settled: Any
                  ) -> tuple[Any, Any]:
        # Hooks that are not callable go through unwrapped: the loop rejects them. With no
        # SDK when the loop starts, it runs untraced (an SDK configured later applies to
        # the next consume() call).
        if not self.recording() or not (around_handler is None or callable(around_handler)) or not (
                on_settled is None or callable(on_settled)):
            return around_handler, on_settled
        run = _Consume(self.tracer, queue, around_handler, on_settled,
                       self.provider or trace.get_tracer_provider())
        return run.around_handler, run.on_settled


def instrument(tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace every Producer and consume loop of this process from now on.

    Opt-in, so a process that never calls it pays nothing and never imports OpenTelemetry.
    Calling it again replaces the tracer provider. Consume loops already running keep the
    tracing they started with.

    Args:
        tracer_provider: where the spans go; default: the global provider
            (``opentelemetry.trace.set_tracer_provider``), looked up when each span starts,
            so the SDK may be configured after this call.
    """
    _tracing.hook = _Tracing(tracer_provider)


def uninstrument() -> None:
    """Stop tracing new enqueues and consume loops."""
    _tracing.hook = None


def is_instrumented() -> bool:
    """True between ``instrument()`` and ``uninstrument()``."""
    return _tracing.hook is not None
