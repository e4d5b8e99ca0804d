"""One definition of a message's state: Admin, CLI, Prometheus and the dashboard agree.

A queue holding a message in every state, including a grouped message parked behind its
group's head (waiting: "delayed", not claimable), is counted the same way by
``Admin.queue_metrics``, ``pgqrs queue metrics``, the Prometheus collector and the
dashboard's per-state pages and per-message state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from prometheus_client import CollectorRegistry

from pgqrs import Admin, Consumer, Producer
from pgqrs._db import create_engine
from pgqrs.dashboard._queries import MESSAGE_STATES, Cursor, DashboardRepository
from pgqrs.prometheus import QueueCollector
from pgqrs.settings import Settings

EXPECTED = {"pending": 2, "leased": 1, "delayed": 2, "dead": 1}


async def test_every_reader_counts_a_parked_message_as_delayed(dsn: str) -> None:
    async with Admin(dsn) as admin:
        queue = await admin.create_queue("work", max_read_ct=1)
    async with Producer(dsn, "work", "p", 1) as producer, \
            Consumer(dsn, "work", "c", 1, visibility_timeout=3600) as consumer:
        await producer.enqueue({"is": "leased"})
        assert len(await consumer.dequeue()) == 1  # leased until the consumer closes
        await producer.enqueue({"is": "dead"})
        (dead,) = await consumer.dequeue()
        assert await consumer.release(dead) == 1  # visible again, deliveries used up
        await producer.enqueue({"is": "pending"})
        await producer.enqueue({"is": "delayed"}, delay=3600)
        await producer.enqueue({"is": "group head"}, group="g")
        parked = await producer.enqueue({"is": "parked"}, group="g")

        # Counted while the consumer still holds its lease (closing it gives it back).
        async with Admin(dsn) as admin:
            metrics = await admin.queue_metrics("work")
        by_admin = {s: getattr(metrics, f"{s}_messages") for s in MESSAGE_STATES}

        env = {**os.environ, "PGQRS_DSN": dsn}
        cli = subprocess.run([sys.executable, "-m", "pgqrs", "queue", "metrics", "work",
                              "--format", "json"], env=env, capture_output=True, text=True,
                             timeout=120, check=True)
        by_cli = {s: json.loads(cli.stdout)[f"{s}_messages"] for s in MESSAGE_STATES}

        registry = CollectorRegistry()
        registry.register(QueueCollector(dsn))
        by_prometheus = {s: registry.get_sample_value(f"pgqrs_messages_{s}", {"queue": "work"})
                         for s in MESSAGE_STATES}

        engine = create_engine(dsn, Settings(), pooled=False)
        repo = DashboardRepository("public")
        try:
            async with engine.connect() as conn:
                by_dashboard = {}
                for state in MESSAGE_STATES:
                    page = await repo.messages_page(conn, queue_id=queue.id, state=state,
                                                    max_read_ct=1, cursor=Cursor(), limit=50)
                    by_dashboard[state] = len(page.rows)
                    assert {row["state"] for row in page.rows} <= {state}
                parked_state = await repo.message_state(conn, message_id=parked,
                                                        max_read_ct=1)
        finally:
            await engine.dispose()

    assert by_admin == by_cli == by_prometheus == by_dashboard == EXPECTED
    assert parked_state == "delayed"
    assert metrics.oldest_pending_age_seconds is not None
