"""``ConsumeMetrics``: counters and histograms of the consume loop, fed by its outcome hook.

``Consumer.consume(handler, on_settled=metrics)`` calls the instance once per delivery,
after the database recorded the outcome. Labels are the queue and the outcome only (both
bounded sets), never anything per message.
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

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


class _Families:
    """The metric objects of one registry, shared by every ``ConsumeMetrics`` on it."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.consumed = Counter(
            "pgqrs_consumed", "Deliveries settled by the consume loop, by outcome.",
            ["queue", "outcome"], registry=registry)
        self.handler_duration = Histogram(
            "pgqrs_handler_duration_seconds",
            "Seconds a handler ran (until it returned, raised or was cancelled).",
            ["queue"], registry=registry, buckets=HANDLER_BUCKETS)
        self.enqueue_to_start = Histogram(
            "pgqrs_enqueue_to_start_seconds",
            "Seconds from enqueue to the claim that started the handler (database clock).",
            ["queue"], registry=registry, buckets=WAIT_BUCKETS)


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = (
    weakref.WeakKeyDictionary())
_lock = threading.Lock()


def _families(registry: CollectorRegistry | None) -> _Families:
    if registry is None:
        return _Families(None)
    with _lock:
        families = _by_registry.get(registry)
        if families is None:
            families = _by_registry[registry] = _Families(registry)
        return families


class ConsumeMetrics:
    """Consume-loop metrics of one queue, to pass as ``Consumer.consume(on_settled=...)``.

    Exports ``pgqrs_consumed_total{queue,outcome}`` (a counter per outcome: succeeded,
    retried, dead_lettered, released, abandoned), ``pgqrs_handler_duration_seconds{queue}``
    and ``pgqrs_enqueue_to_start_seconds{queue}`` (histograms). Instances for several queues
    may share a registry; their metric families are registered once.

    ``pgqrs_enqueue_to_start_seconds`` is measured from the message's ``enqueued_at`` to its
    ``dequeued_at`` (the claim that started this delivery), both stamped by the database
    clock, so clock skew between the database and the consumer's host does not enter it.
    The loop starts a handler as soon as it claims its message, so the claim stands for the
    handler's start. A retried message's wait includes its earlier attempts and backoffs,
    and a delayed message's wait includes its delay.

    Example:
        metrics = ConsumeMetrics("emails")
        await consumer.consume(send_email, on_settled=metrics)

    Args:
        queue: the queue label (the consumer's queue).
        registry: where to register the metric families (default: prometheus_client's
            global ``REGISTRY``); ``None`` registers nothing.

    Raises:
        ValidationError: the queue name is invalid.
    """

    def __init__(self, queue: str, *, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.queue = _validation.queue_name(queue)
        families = _families(registry)
        # Children bound once: the hook then costs one dict lookup and two observations.
        self._consumed = {o: families.consumed.labels(self.queue, o) for o in OUTCOMES}
        self._duration = families.handler_duration.labels(self.queue)
        self._wait = families.enqueue_to_start.labels(self.queue)
        self._family = families.consumed

    def __repr__(self) -> str:
        return f"ConsumeMetrics(queue={self.queue!r})"

    def __call__(self, event: Settled) -> None:
        """Record one settled delivery (the ``on_settled`` hook; never blocks)."""
        outcome = str(event.outcome)
        counter = self._consumed.get(outcome)
        if counter is None:  # an outcome added after this version: still counted
            counter = self._consumed[outcome] = self._family.labels(self.queue, outcome)
        counter.inc()
        if event.duration is None:
            return  # the handler never started: no duration, no start
        self._duration.observe(event.duration)
        message = event.message
        if message.dequeued_at is not None:
            wait = (message.dequeued_at - message.enqueued_at).total_seconds()
            self._wait.observe(max(wait, 0.0))
