"""The consume loop's metrics (``ConsumeMetrics`` on ``on_settled``/``on_claimed``) against
the database."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, start_http_server

from pgqrs import Admin, Consumer, Producer, QueueMessage, ValidationError
from pgqrs.prometheus import ConsumeMetrics, QueueCollector

from .prom import Samples, scrape, value

OUTCOMES = ("succeeded", "retried", "dead_lettered", "released", "abandoned")


class Flaky:
    """A handler that fails as its message says: never, on the first delivery, or always."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, message: QueueMessage) -> None:
        self.calls += 1
        await asyncio.sleep(random.uniform(0, 0.003))
        fail = message.payload["fail"]
        if fail == "always" or (fail == "once" and message.read_ct == 1):
            raise RuntimeError(f"injected failure of {message.id}")


def _counted(samples: Samples, outcome: str) -> float:
    return value(samples, "pgqrs_consumed_total", queue="work", outcome=outcome)


async def test_counters_after_a_run_with_failures_equal_the_archive(dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    plan = ["ok"] * 40 + ["once"] * 12 + ["always"] * 5
    random.Random(7).shuffle(plan)
    async with Producer(dsn, "work", "producer", 1) as producer:
        await producer.enqueue_batch([{"fail": f} for f in plan])

    # A worker process's setup: the loop's metrics and the queue state in one registry,
    # served over HTTP by prometheus_client's own server.
    registry = CollectorRegistry()
    metrics = ConsumeMetrics("work", registry=registry)
    registry.register(QueueCollector(dsn))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        samples, _ = await scrape(url)
        # Every outcome's series exists from the start, at zero.
        assert [_counted(samples, o) for o in OUTCOMES] == [0.0] * 5

        handler = Flaky()
        claims: list[list[int]] = []

        def claimed(messages: list[QueueMessage]) -> None:
            claims.append([m.id for m in messages])
            metrics.claimed(messages)

        async with Consumer(dsn, "work", "consumer", 1) as consumer:
            await consumer.consume(handler, on_settled=metrics, on_claimed=claimed,
                                   batch_size=8, concurrency=4, backoff_base=0,
                                   stop_when_idle=True)
        samples, _ = await scrape(url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

    conn = await asyncpg.connect(dsn)
    try:
        archive = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE NOT dead_letter) AS succeeded,"
            "       count(*) FILTER (WHERE dead_letter) AS dead_lettered,"
            "       sum(read_ct) AS deliveries,"
            "       sum(read_ct - 1) AS retried,"  # every delivery but the last was retried
            "       (SELECT count(*) FROM pgqrs_messages) AS live"
            " FROM pgqrs_archive")
    finally:
        await conn.close()
    assert archive["live"] == 0
    assert (archive["succeeded"], archive["dead_lettered"]) == (52, 5)
    assert _counted(samples, "succeeded") == archive["succeeded"]
    assert _counted(samples, "dead_lettered") == archive["dead_lettered"]
    assert _counted(samples, "retried") == archive["retried"] == 12 + 5 * 4
    assert _counted(samples, "released") == _counted(samples, "abandoned") == 0
    # One handler run per delivery: both histograms saw each delivery once.
    assert handler.calls == archive["deliveries"]
    for histogram in ("pgqrs_handler_duration_seconds", "pgqrs_enqueue_to_start_seconds"):
        assert value(samples, f"{histogram}_count", queue="work") == archive["deliveries"]
        assert value(samples, f"{histogram}_bucket", queue="work", le="+Inf") == (
            archive["deliveries"])
    assert 0 < value(samples, "pgqrs_handler_duration_seconds_sum", queue="work") < 60
    # Every delivery came from exactly one claim; the histogram has one observation per
    # claim, of its size, in the right buckets.
    sizes = [len(c) for c in claims]
    assert sum(sizes) == archive["deliveries"] and 0 not in sizes and max(sizes) <= 4
    assert value(samples, "pgqrs_claim_batch_size_count", queue="work") == len(claims)
    assert value(samples, "pgqrs_claim_batch_size_sum", queue="work") == sum(sizes)
    for le in (1, 2, 5, 10, 1000):
        assert value(samples, "pgqrs_claim_batch_size_bucket", queue="work",
                     le=f"{float(le)}") == sum(1 for n in sizes if n <= le)
    # The queue state, scraped alongside: everything is in the archive now.
    assert value(samples, "pgqrs_messages_archived", queue="work") == 57
    assert value(samples, "pgqrs_messages_pending", queue="work") == 0


async def test_stopping_mid_handler_counts_released(dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    async with Producer(dsn, "work", "producer", 1) as producer:
        await producer.enqueue({"fail": "never"})
    registry = CollectorRegistry()
    metrics = ConsumeMetrics("work", registry=registry)
    started = asyncio.Event()

    async def stuck(message: QueueMessage) -> None:
        started.set()
        await asyncio.sleep(3600)

    stop = asyncio.Event()
    async with Consumer(dsn, "work", "consumer", 1) as consumer:
        run = asyncio.create_task(consumer.consume(stuck, on_settled=metrics, stop=stop,
                                                   grace_period=0))
        await asyncio.wait_for(started.wait(), 30)
        stop.set()
        assert await asyncio.wait_for(run, 30) == 0
        async with Admin(dsn) as admin:
            (state,) = await admin.all_queues_metrics()
    assert state.pending_messages == 1  # given back, visible at once
    counts = {s.labels["outcome"]: s.value for m in registry.collect()
              if m.name == "pgqrs_consumed" for s in m.samples if s.name.endswith("_total")}
    assert counts == {"succeeded": 0, "retried": 0, "dead_lettered": 0, "released": 1,
                      "abandoned": 0}
    # The handler was cancelled: its (short) duration is still observed.
    assert registry.get_sample_value("pgqrs_handler_duration_seconds_count",
                                     {"queue": "work"}) == 1


def test_consume_metrics_share_a_registry_and_validate_the_queue() -> None:
    registry = CollectorRegistry()
    a, b = ConsumeMetrics("a", registry=registry), ConsumeMetrics("b", registry=registry)
    again = ConsumeMetrics("a", registry=registry)  # same families, same series
    assert repr(a) == "ConsumeMetrics(queue='a')" and b.queue == "b" and again.queue == "a"
    names = {m.name for m in registry.collect()}
    assert names == {"pgqrs_consumed", "pgqrs_handler_duration_seconds",
                     "pgqrs_enqueue_to_start_seconds", "pgqrs_claim_batch_size"}
    for bad in ("", "x" * 1000, 7):
        with pytest.raises(ValidationError):
            ConsumeMetrics(bad, registry=registry)  # type: ignore[arg-type]


def test_histograms_match_prometheus_clients_own() -> None:
    # The hook keeps its own buckets (cheaper than prometheus_client's metric objects); for
    # the same observations the exposition must be the same, boundaries included.
    from datetime import UTC, datetime, timedelta

    from prometheus_client import Histogram

    from pgqrs import Outcome, Settled
    from pgqrs.prometheus._loop import HANDLER_BUCKETS

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = ConsumeMetrics("q", registry=ours)
    reference = Histogram("pgqrs_handler_duration_seconds", "", ["queue"], registry=theirs,
                          buckets=HANDLER_BUCKETS).labels("q")
    now = datetime.now(UTC)
    message = QueueMessage(1, 1, {}, now, now - timedelta(seconds=2), 1, now, None, None)
    for duration in (0.0, 0.001, 0.0011, 0.5, 2.5, 299.9, 300.0, 301.0, 1e9, *HANDLER_BUCKETS):
        metrics(Settled(message, Outcome.SUCCEEDED, duration))
        reference.observe(duration)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {(s.name, s.labels.get("le", "")): s.value for m in registry.collect()
                if m.name == "pgqrs_handler_duration_seconds" for s in m.samples
                if not s.name.endswith("_created")}

    assert samples(ours) == samples(theirs)
    assert ours.get_sample_value("pgqrs_enqueue_to_start_seconds_bucket",
                                 {"queue": "q", "le": "2.5"}) == 25
    assert ours.get_sample_value("pgqrs_enqueue_to_start_seconds_bucket",
                                 {"queue": "q", "le": "1.0"}) == 0
    # A delivery whose handler never ran counts, and observes nothing.
    metrics(Settled(message, Outcome.ABANDONED, None))
    assert ours.get_sample_value("pgqrs_consumed_total",
                                 {"queue": "q", "outcome": "abandoned"}) == 1
    assert ours.get_sample_value("pgqrs_handler_duration_seconds_count", {"queue": "q"}) == 25


async def test_on_claimed_may_be_async_its_errors_are_ignored_and_it_must_be_callable(
        dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
    async with Producer(dsn, "work", "producer", 1) as producer:
        await producer.enqueue_batch([{"n": n} for n in range(5)])
    seen: list[int] = []

    async def claimed(messages: list[QueueMessage]) -> None:
        seen.extend(m.id for m in messages)
        raise RuntimeError("a broken hook")  # logged; the loop carries on

    async def handler(message: QueueMessage) -> None:
        return None

    async with Consumer(dsn, "work", "consumer", 1) as consumer:
        with pytest.raises(ValidationError, match="on_claimed"):
            await consumer.consume(handler, on_claimed=7)  # type: ignore[arg-type]
        assert await consumer.consume(handler, on_claimed=claimed, batch_size=2,
                                      stop_when_idle=True) == 5
    assert len(seen) == len(set(seen)) == 5
