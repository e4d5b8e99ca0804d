"""The seam through which ``pgqrs.otel`` traces the clients, empty unless it is installed.

``Producer.enqueue``/``enqueue_batch`` and ``Consumer.consume`` look at ``hook`` once per
call: while it is ``None`` (always, unless ``pgqrs.otel.instrument()`` ran) they pay one
attribute read and a no-op context manager, and nothing imports OpenTelemetry. The
instrumentation lives in ``pgqrs.otel`` (an optional extra); this module only names what
the clients call, so the core never depends on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class SendScope(Protocol):
    """One enqueue (or batch) being traced: adds the trace context to headers."""

    def inject(self, headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
        """The headers to store: ``headers`` with the trace context added (or as given)."""

    def inject_each(self, items: Sequence[Any]) -> Sequence[Any]:
        """Batch items with headers of their own, with the trace context added to those."""

    def sent(self, ids: Sequence[int]) -> None:
        """Record the ids the database gave the messages."""


class Tracing(Protocol):
    """What ``pgqrs.otel.instrument()`` installs as ``hook``."""

    def sending(self, queue: str, count: int) -> contextlib.AbstractContextManager[SendScope]:
        """A scope around one enqueue of ``count`` messages (a PRODUCER span)."""

    def consuming(self, queue: str, around_handler: Any, on_settled: Any) -> tuple[Any, Any]:
        """The consume loop's ``around_handler`` and ``on_settled``, wrapped in spans."""


class _Untraced:
    """The scope when nothing is instrumented: headers pass through unchanged."""

    __slots__ = ()

    def __enter__(self) -> _Untraced:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def inject(self, headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
        return headers

    def inject_each(self, items: Sequence[Any]) -> Sequence[Any]:
        return items

    def sent(self, ids: Sequence[int]) -> None:
        return None


UNTRACED = _Untraced()

hook: Tracing | None = None
"""Set by ``pgqrs.otel.instrument()``, cleared by ``pgqrs.otel.uninstrument()``."""


def sending(queue: str, count: int) -> contextlib.AbstractContextManager[SendScope]:
    """The scope of one enqueue: a PRODUCER span if instrumented, else a shared no-op.

    ``count`` 0 (an empty batch, or one that is no list) gets the no-op: nothing is sent.
    """
    if hook is None or count < 1:
        return UNTRACED
    return hook.sending(queue, count)


def consuming(queue: str, around_handler: Any, on_settled: Any) -> tuple[Any, Any]:
    """The consume loop's hooks, wrapped in CONSUMER spans if instrumented, else as given."""
    if hook is None:
        return around_handler, on_settled
    return hook.consuming(queue, around_handler, on_settled)
