"""pgqrs.sync on a psycopg Engine: lent sessions, threads, on-use heartbeats, the loop rule."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

import pgqrs
import pgqrs.sync
from pgqrs import WorkerStatus


@pytest.fixture
def engine(dsn: str) -> Iterator[Engine]:
    eng = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    pgqrs.sync.Admin(eng).create_queue("q")
    yield eng
    eng.dispose()


def scalar(engine: Engine, sql: str) -> object:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def test_registration_survives_the_callers_rollback(engine: Engine) -> None:
    with pgqrs.sync.Producer(engine, "q", "web", 1) as producer, Session(engine) as session:
        session.begin()
        producer.enqueue({"n": 1}, session=session)  # the first use registers
        assert session.in_transaction()  # lent: neither committed nor closed
        session.rollback()
        assert scalar(engine, "SELECT count(*) FROM pgqrs_messages") == 0
        assert scalar(engine, "SELECT status::text FROM pgqrs_workers") == "ready"
        session.begin()
        producer.enqueue({"n": 2}, connection=session.connection())
        session.commit()
    assert scalar(engine, "SELECT count(*) FROM pgqrs_messages") == 1
    assert scalar(engine, "SELECT status::text FROM pgqrs_workers") == "stopped"


def test_a_lent_async_session_is_refused(engine: Engine) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    session = AsyncSession(create_async_engine("postgresql+asyncpg://localhost/x"))
    with (pgqrs.sync.Producer(engine, "q", "web", 1) as producer,
          pytest.raises(pgqrs.ConfigurationError, match="must be a Session")):
        producer.enqueue({"n": 1}, session=session)  # type: ignore[arg-type]


def test_threads_share_one_producer(engine: Engine) -> None:
    producer = pgqrs.sync.Producer(engine, "q", "web", 1)
    start = threading.Barrier(8)
    ids: list[int] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            start.wait()  # all threads hit the first use (registration) together
            for i in range(20):
                if i % 2:
                    ids.append(producer.enqueue({"i": i}))
                else:
                    with Session(engine) as session, session.begin():
                        ids.append(producer.enqueue({"i": i}, session=session))
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    producer.close()
    assert failures == []
    assert len(set(ids)) == 160
    assert scalar(engine, "SELECT count(*) FROM pgqrs_messages") == 160
    assert scalar(engine, "SELECT count(*) FROM pgqrs_workers") == 1


def test_rate_limited_producer_paces_threads(engine: Engine) -> None:
    producer = pgqrs.sync.Producer(engine, "q", "web", 1, rate_limit=40, rate_burst=1)
    threads = [threading.Thread(target=lambda: [producer.enqueue({}) for _ in range(3)])
               for _ in range(4)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    producer.close()
    assert scalar(engine, "SELECT count(*) FROM pgqrs_messages") == 12
    assert time.monotonic() - began >= 11 / 40 * 0.9


def test_heartbeat_on_use_and_retake_after_a_reclaim(engine: Engine) -> None:
    admin = pgqrs.sync.Admin(engine)
    producer = pgqrs.sync.Producer(engine, "q", "web", 1, heartbeat_interval=0.2)
    producer.enqueue({"n": 1})
    worker_id = producer.worker_id
    assert worker_id is not None
    first = admin.get_worker(worker_id).heartbeat_at
    producer.enqueue({"n": 2})  # within the interval: no beat
    assert admin.get_worker(worker_id).heartbeat_at == first
    time.sleep(0.3)
    producer.enqueue({"n": 3})  # an interval later: this call beats
    assert admin.get_worker(worker_id).heartbeat_at > first

    time.sleep(0.5)  # idle: nothing beats for a sync producer between calls
    admin.reclaim_messages("q", older_than=0.4)
    assert admin.get_worker(worker_id).status is WorkerStatus.STOPPED
    producer.enqueue({"n": 4})  # takes its row back
    assert producer.worker_id == worker_id
    assert admin.get_worker(worker_id).status is WorkerStatus.READY
    producer.close()
    assert admin.get_worker(worker_id).status is WorkerStatus.STOPPED
    with pytest.raises(pgqrs.StateError):
        producer.enqueue({"n": 5})  # closed, as the async Producer
    assert admin.get_messages().count() == 4


def test_shutdown_is_final_even_when_a_beat_is_due(engine: Engine) -> None:
    producer = pgqrs.sync.Producer(engine, "q", "web", 1, heartbeat_interval=0.1)
    producer.register()
    producer.shutdown()
    time.sleep(0.2)
    with pytest.raises(pgqrs.StateError):
        producer.enqueue({})
    assert producer.status() is WorkerStatus.STOPPED


def test_admin_twins_run_on_the_sync_engine(engine: Engine) -> None:
    with pgqrs.sync.Admin(engine) as admin:
        assert admin.verify() == admin.system_stats().schema_revision
        admin.ping()
        with pgqrs.sync.Producer(engine, "q", "web", 1) as producer:
            producer.enqueue_batch([{"a": 1}, {"a": 2}])
            assert admin.queue_metrics("q").pending_messages == 2
            assert (admin.get_workers()).count("q") == 1
        assert [q.queue_name for q in admin.list_queues()] == ["q"]
        assert admin.get_messages().count("q") == 2
        assert admin.purge_queue("q") == 2
        assert admin.get_archive().count() == 0
        with pytest.raises(pgqrs.QueueNotFoundError):
            admin.get_queue("nope")


async def test_called_from_a_running_loop_is_refused(engine: Engine) -> None:
    producer = pgqrs.sync.Producer(engine, "q", "web", 1)
    with pytest.raises(pgqrs.ConfigurationError, match="running event loop"):
        producer.enqueue({"n": 1})
    assert producer.worker_id is None  # nothing ran
