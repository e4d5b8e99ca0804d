"""``ConsumeMetrics``: counters and histograms of the consume loop, fed by its hooks.

``Consumer.consume(handler, on_settled=metrics, on_claimed=metrics.claimed)`` calls the
instance once per delivery, after the database recorded the outcome, and ``claimed`` once
per non-empty claim. Labels are the queue and the outcome only (both bounded sets), never
anything per message.

The hook is on the loop's hot path, so it does not go through prometheus_client's metric
objects (a counter and two histograms would take five locks per delivery, about 2 µs):
each queue's numbers are plain integers and floats behind one lock, turned into metric
families only when a scrape asks (``_LoopCollector.collect``). About 0.7 µs per delivery.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Iterable, Sequence

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from pgqrs import _validation
from pgqrs.types import Outcome, Settled

OUTCOMES = tuple(str(o) for o in Outcome)
"""Every ``pgqrs.Outcome`` value; each gets its series at 0 before the first delivery."""

HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0)
"""Buckets of ``pgqrs_handler_duration_seconds``: from a millisecond to five minutes."""
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0, 900.0, 3600.0)
"""Buckets of ``pgqrs_enqueue_to_start_seconds``: from 5 ms to an hour of backlog."""
CLAIM_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
"""Buckets of ``pgqrs_claim_batch_size``: messages per claim, up to the largest batch."""


class _Histogram:
    """Observations per bucket (the last one is +Inf) and their sum; not thread-safe."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound
        # >= value.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per ``le`` label, as the exposition wants them."""
        cumulative, out = 0, list[tuple[str, float]]()
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            # prometheus_client's spelling of ``le``: "0.005", "1.0", "+Inf".
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        return out


class _QueueSeries:
    """One queue's numbers in one registry, shared by the ``ConsumeMetrics`` that feed it."""

    __slots__ = ("claims", "consumed", "duration", "lock", "wait")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.consumed: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.duration = _Histogram(HANDLER_BUCKETS)
        self.wait = _Histogram(WAIT_BUCKETS)
        self.claims = _Histogram(CLAIM_BUCKETS)


class _LoopCollector:
    """Exports every queue's consume-loop numbers of one registry at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, _QueueSeries] = {}

    def series(self, queue: str) -> _QueueSeries:
        with self._lock:
            found = self._queues.get(queue)
            if found is None:
                found = self._queues[queue] = _QueueSeries()
            return found

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            queues = dict(self._queues)
        return self._families(queues)

    @staticmethod
    def _families(queues: dict[str, _QueueSeries]) -> list[Metric]:
        consumed = CounterMetricFamily(
            "pgqrs_consumed", "Deliveries settled by the consume loop, by outcome.",
            labels=["queue", "outcome"])
        duration = HistogramMetricFamily(
            "pgqrs_handler_duration_seconds",
            "Seconds a handler ran (until it returned, raised or was cancelled).",
            labels=["queue"])
        wait = HistogramMetricFamily(
            "pgqrs_enqueue_to_start_seconds",
            "Seconds from enqueue to the claim that started the handler (database clock).",
            labels=["queue"])
        claims = HistogramMetricFamily(
            "pgqrs_claim_batch_size",
            "Messages per claim of the consume loop (claims that found none are not counted).",
            labels=["queue"])
        for queue, series in sorted(queues.items()):
            with series.lock:  # one consistent copy per queue
                counts = dict(series.consumed)
                durations = (series.duration.buckets(), series.duration.total)
                waits = (series.wait.buckets(), series.wait.total)
                sizes = (series.claims.buckets(), series.claims.total)
            for outcome, count in counts.items():
                consumed.add_metric([queue, outcome], count)
            duration.add_metric([queue], durations[0], durations[1])
            wait.add_metric([queue], waits[0], waits[1])
            claims.add_metric([queue], sizes[0], sizes[1])
        return [consumed, duration, wait, claims]


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _LoopCollector] = (
    weakref.WeakKeyDictionary())
_registering = threading.Lock()


def _collector(registry: CollectorRegistry | None) -> _LoopCollector:
    """The registry's collector of consume-loop numbers, registered on first use."""
    if registry is None:
        return _LoopCollector()
    with _registering:
        collector = _by_registry.get(registry)
        if collector is None:
            collector = _by_registry[registry] = _LoopCollector()
            registry.register(collector)
        return collector


class ConsumeMetrics:
    """Consume-loop metrics of one queue, to pass as ``Consumer.consume(on_settled=...)``.

    Exports ``pgqrs_consumed_total{queue,outcome}`` (a counter per outcome: succeeded,
    retried, dead_lettered, released, abandoned), ``pgqrs_handler_duration_seconds{queue}``
    and ``pgqrs_enqueue_to_start_seconds{queue}`` (histograms), fed by the instance as
    ``on_settled``, and ``pgqrs_claim_batch_size{queue}`` (a histogram of messages per
    claim), fed by its ``claimed`` method as ``on_claimed``. Instances for the same or
    other queues may share a registry (and threads): their numbers add up per queue.

    ``pgqrs_enqueue_to_start_seconds`` is measured from the message's ``enqueued_at`` to its
    ``dequeued_at`` (the claim that started this delivery), both stamped by the database
    clock, so clock skew between the database and the consumer's host does not enter it.
    The loop starts a handler as soon as it claims its message, so the claim stands for the
    handler's start. A retried message's wait includes its earlier attempts and backoffs,
    and a delayed message's wait includes its delay.

    Example:
        metrics = ConsumeMetrics("emails")
        await consumer.consume(send_email, on_settled=metrics, on_claimed=metrics.claimed)

    Args:
        queue: the queue label (the consumer's queue).
        registry: where the metrics are exported (default: prometheus_client's global
            ``REGISTRY``); ``None`` exports them nowhere.

    Raises:
        ValidationError: the queue name is invalid.
    """

    __slots__ = ("_series", "queue")

    def __init__(self, queue: str, *, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.queue = _validation.queue_name(queue)
        self._series = _collector(registry).series(self.queue)

    def __repr__(self) -> str:
        return f"ConsumeMetrics(queue={self.queue!r})"

    def __call__(self, event: Settled) -> None:
        """Record one settled delivery (the ``on_settled`` hook; never blocks for long)."""
        series = self._series
        outcome = event.outcome
        duration = event.duration
        wait = None
        if duration is not None:  # the handler started: it has a duration and a start
            message = event.message
            if message.dequeued_at is not None:
                wait = max((message.dequeued_at - message.enqueued_at).total_seconds(), 0.0)
        with series.lock:
            consumed = series.consumed
            if outcome in consumed:
                consumed[outcome] += 1
            else:  # an outcome added after this version: still counted
                consumed[str(outcome)] = consumed.get(str(outcome), 0) + 1
            if duration is not None:
                series.duration.observe(duration)
            if wait is not None:
                series.wait.observe(wait)

    def claimed(self, messages: Sequence[object]) -> None:
        """Record one claim's batch size (the ``on_claimed`` hook)."""
        series = self._series
        with series.lock:
            series.claims.observe(len(messages))
