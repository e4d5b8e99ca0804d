"""OpenTelemetry tracing for pgqrs (``pip install 'pgqrs[otel]'``).

One opt-in call traces every client of the process::

    import pgqrs.otel
    pgqrs.otel.instrument()

- ``Producer.enqueue`` / ``enqueue_batch``: a PRODUCER span ``send <queue>``, whose W3C
  trace context (the global propagator's fields: ``traceparent``, ``tracestate``, ...) is
  added to each message's headers.
- ``Consumer.consume``: a CONSUMER span ``process <queue>`` per delivery, a child of the
  producer's span (and linked to it), current while the handler runs and ended once the
  delivery is settled, with the outcome, the attempt (``read_ct``) and any exception. A
  delivery whose producer was not sampled gets none when the sampler follows the parent
  (``ParentBased``): its handler runs in the producer's unsampled context.

Spans follow the OpenTelemetry messaging semantic conventions (v1.27+: operation types
``send`` and ``process``). Only ``opentelemetry-api`` is needed; spans are recorded by
whatever SDK the application configures (none: the API's no-op, no headers added).

``import pgqrs`` never imports this package (nor OpenTelemetry).
"""

from __future__ import annotations

try:
    import opentelemetry.trace  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "pgqrs.otel needs opentelemetry-api: pip install 'pgqrs[otel]'"
    ) from exc

from pgqrs.otel._spans import (
    SYSTEM,
    context_of,
    instrument,
    is_instrumented,
    uninstrument,
)

__all__ = ["SYSTEM", "context_of", "instrument", "is_instrumented", "uninstrument"]
