"""Prometheus metrics for pgqrs (``pip install 'pgqrs[prometheus]'``).

- :class:`QueueCollector`: per-queue message counts, oldest pending age, workers by status
  and the schema revision, read from the database at scrape time in one statement.
- :class:`ConsumeMetrics`: the consume loop's counters and histograms, passed as
  ``Consumer.consume(on_settled=...)``.
- :func:`asgi_app`: mount everything in a host ASGI app (one line);
  :func:`serve` / ``pgqrs metrics serve``: a standalone exporter.

``import pgqrs`` never imports this package (nor prometheus_client).
"""

from __future__ import annotations

try:
    import prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "pgqrs.prometheus needs prometheus_client: pip install 'pgqrs[prometheus]'"
    ) from exc

from pgqrs.prometheus._collector import QueueCollector, QueueState, Scrape, Snapshot
from pgqrs.prometheus._loop import ConsumeMetrics
from pgqrs.prometheus._serve import Exporter, asgi_app, serve

__all__ = [
    "ConsumeMetrics",
    "Exporter",
    "QueueCollector",
    "QueueState",
    "Scrape",
    "Snapshot",
    "asgi_app",
    "serve",
]
