"""Queue policy (SPEC §12): stored on the queue row, followed by every client."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from pgqrs import (
    Admin,
    ConfigurationError,
    Consumer,
    Producer,
    QueueInfo,
    QueueMessage,
    QueueNotFoundError,
    QueuePolicy,
    ValidationError,
    WorkerStatus,
)
from pgqrs.repositories import MessageRepository, QueueRepository

OLD_DEFAULTS = QueuePolicy(max_read_ct=5, visibility_timeout=30.0, retry_backoff_base=1.0,
                           retry_backoff_max=300.0, retention=None, paused=False)


async def row(dsn: str, name: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        record = await conn.fetchrow("SELECT * FROM pgqrs_queues WHERE queue_name = $1", name)
        assert record is not None
        return record
    finally:
        await conn.close()


async def test_create_queue_defaults_reproduce_the_old_behaviour(admin: Admin) -> None:
    info = await admin.create_queue("plain")
    assert info.policy == OLD_DEFAULTS
    assert await admin.get_queue("plain") == info
    assert (await admin.list_queues()) == [info]


async def test_create_queue_with_a_policy_and_from_settings(
        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Admin(dsn) as admin:
        info = await admin.create_queue(
            "custom", max_read_ct=2, visibility_timeout=timedelta(minutes=2),
            retry_backoff_base=0.5, retry_backoff_max=60, retention=7 * 86400)
    assert (info.max_read_ct, info.visibility_timeout, info.retry_backoff_base,
            info.retry_backoff_max, info.retention, info.paused) == (
        2, 120.0, 0.5, 60.0, 604800.0, False)
    stored = await row(dsn, "custom")
    assert stored["visibility_timeout"] == timedelta(minutes=2)
    assert stored["retention"] == timedelta(days=7)

    # Defaults for new queues: PGQRS_* variables, then Admin's own keywords.
    monkeypatch.setenv("PGQRS_MAX_READ_CT", "7")
    monkeypatch.setenv("PGQRS_VISIBILITY_TIMEOUT", "45")
    monkeypatch.setenv("PGQRS_RETENTION", "3600")
    async with Admin(dsn) as admin:
        env = await admin.create_queue("from-env")
        assert (env.max_read_ct, env.visibility_timeout, env.retention) == (7, 45.0, 3600.0)
        forever = await admin.create_queue("forever", retention=None)
        assert forever.retention is None and forever.max_read_ct == 7
    async with Admin(dsn, max_read_ct=3, retry_backoff_base=2) as admin:
        assert admin.max_read_ct == 3
        own = await admin.create_queue("from-admin")
        assert (own.max_read_ct, own.retry_backoff_base, own.visibility_timeout) == (3, 2.0, 45)
        explicit = await admin.create_queue("explicit", max_read_ct=9)
        assert explicit.max_read_ct == 9


@pytest.mark.parametrize(("field", "value"), [
    ("max_read_ct", 0), ("max_read_ct", -1), ("max_read_ct", 2.0), ("max_read_ct", True),
    ("max_read_ct", "5"), ("max_read_ct", 2**31),
    ("visibility_timeout", 0), ("visibility_timeout", -1), ("visibility_timeout", math.nan),
    ("visibility_timeout", math.inf), ("visibility_timeout", "30"),
    ("visibility_timeout", timedelta(0)), ("visibility_timeout", 1e12),
    ("retry_backoff_base", -0.1), ("retry_backoff_base", None), ("retry_backoff_max", "1"),
    ("retention", 0), ("retention", -5), ("retention", timedelta(days=-1)),
    ("paused", 1), ("paused", "yes"), ("no_such_field", 1),
])
async def test_update_rejects_bad_values_and_changes_nothing(
        admin: Admin, dsn: str, field: str, value: object) -> None:
    await admin.create_queue("q")
    before = await row(dsn, "q")
    with pytest.raises(ValidationError, match=field):
        await admin.update_queue("q", **{field: value})
    assert await row(dsn, "q") == before


async def test_create_rejects_bad_values_before_any_sql(admin: Admin) -> None:
    with pytest.raises(ValidationError, match="max_read_ct"):
        await admin.create_queue("q", max_read_ct=0)
    with pytest.raises(ValidationError, match="visibility_timeout"):
        await admin.create_queue("q", visibility_timeout=-3)
    # The given base against the default maximum (300 s) is checked too.
    with pytest.raises(ValidationError, match="retry_backoff_max"):
        await admin.create_queue("q", retry_backoff_base=600)
    with pytest.raises(ValidationError, match="retention"):
        await admin.create_queue("q", retention=0)
    assert await admin.list_queues() == []


async def test_bad_policy_settings_are_configuration_errors(
        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="max_read_ct"):
        Admin(dsn, max_read_ct=0)
    with pytest.raises(ConfigurationError, match="retry_backoff_max"):
        Admin(dsn, retry_backoff_base=10, retry_backoff_max=5)
    monkeypatch.setenv("PGQRS_MAX_READ_CT", "two")
    with pytest.raises(ConfigurationError, match="PGQRS_MAX_READ_CT"):
        Admin(dsn)
    monkeypatch.setenv("PGQRS_MAX_READ_CT", "0")
    with pytest.raises(ConfigurationError, match="max_read_ct"):
        Admin(dsn)


async def test_update_changes_only_the_given_fields(admin: Admin) -> None:
    created = await admin.create_queue("q", retention=60)
    updated = await admin.update_queue("q", max_read_ct=9, retry_backoff_max=timedelta(hours=1))
    assert updated.policy == QueuePolicy(max_read_ct=9, retry_backoff_max=3600.0, retention=60)
    assert (updated.id, updated.queue_name, updated.created_at) == (
        created.id, created.queue_name, created.created_at)
    assert (await admin.update_queue("q", retention=None)).retention is None
    assert await admin.update_queue("q") == await admin.get_queue("q")  # nothing to change
    # Checked against the stored values: a base above the stored maximum is refused.
    with pytest.raises(ValidationError, match="retry_backoff_max"):
        await admin.update_queue("q", retry_backoff_base=7200)
    with pytest.raises(ValidationError, match="retry_backoff_max"):
        await admin.update_queue("q", retry_backoff_base=10, retry_backoff_max=5)
    with pytest.raises(QueueNotFoundError):
        await admin.update_queue("missing", max_read_ct=2)
    with pytest.raises(QueueNotFoundError):
        await admin.pause_queue("missing")
    with pytest.raises(ValidationError):
        await admin.update_queue("", max_read_ct=2)


async def test_database_checks_back_the_validation(admin: Admin, dsn: str) -> None:
    await admin.create_queue("q")
    conn = await asyncpg.connect(dsn)
    try:
        for assignment in ("max_read_ct = 0", "visibility_timeout = '0 s'",
                           "retry_backoff_base = '-1 s'", "retry_backoff_max = '0.5 s'",
                           "retention = '0 s'"):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(f"UPDATE pgqrs_queues SET {assignment}")
    finally:
        await conn.close()


async def test_the_dead_letter_scenario_of_issue_13(dsn: str) -> None:
    """A consumer delivers a poison message twice; any Admin then sees and moves it."""
    async with Admin(dsn) as creator:
        await creator.create_queue("jobs", max_read_ct=2)
    async with (Producer(dsn, "jobs", "p", 1) as producer,
                Consumer(dsn, "jobs", "c", 2) as consumer):
        mid = await producer.enqueue({"poison": True})
        for attempt in (1, 2):
            (message,) = await consumer.dequeue()
            assert message.read_ct == attempt
            await consumer.release([message.id])
        assert await consumer.dequeue() == []  # the queue's threshold, not the client's
    # Any Admin, with default settings or others, judges by the queue's policy.
    async with Admin(dsn, max_read_ct=9) as other:
        metrics = await other.queue_metrics("jobs")
        assert (metrics.dead_messages, metrics.pending_messages) == (1, 0)
        (everything,) = await other.all_queues_metrics()
        assert everything.dead_messages == 1
    async with Admin(dsn) as admin:
        assert await admin.dlq("jobs") == [mid]
        (dead,) = await (await admin.get_archive()).list_dlq_messages()
        assert dead.original_msg_id == mid and dead.read_ct == 2
        assert (await admin.queue_metrics("jobs")).dead_messages == 0


async def test_dlq_of_all_queues_uses_each_queues_threshold(dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("strict", max_read_ct=1)
        await admin.create_queue("lenient", max_read_ct=3)
        delivered: dict[str, list[int]] = {}
        for name in ("strict", "lenient"):
            async with (Producer(dsn, name, f"p-{name}", 1) as producer,
                        Consumer(dsn, name, f"c-{name}", 2) as consumer):
                await producer.enqueue_batch([{"n": 1}, {"n": 2}])
                # Deliver each message once and give it back.
                got = await consumer.dequeue(2)
                await consumer.release([m.id for m in got])
                delivered[name] = [m.id for m in got]
        metrics = {m.queue_name: m for m in await admin.all_queues_metrics()}
        assert (metrics["strict"].dead_messages, metrics["strict"].pending_messages) == (2, 0)
        assert (metrics["lenient"].dead_messages, metrics["lenient"].pending_messages) == (0, 2)
        assert await admin.dlq() == delivered["strict"]
        # Lowering the threshold makes the others dead too, for every client at once.
        await admin.update_queue("lenient", max_read_ct=1)
        assert (await admin.queue_metrics("lenient")).dead_messages == 2
        assert await admin.dlq() == delivered["lenient"]


async def test_a_policy_change_reaches_a_running_consumer(dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("jobs", max_read_ct=1)
        async with (Producer(dsn, "jobs", "p", 1) as producer,
                    Consumer(dsn, "jobs", "c", 2, poll_interval=30) as consumer):
            mid = await producer.enqueue({"x": 1})
            (first,) = await consumer.dequeue()
            await consumer.release([first.id])
            assert await consumer.dequeue() == []
            waiting = asyncio.create_task(consumer.dequeue(wait=10))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            # One more delivery allowed: the waiting consumer is woken (NOTIFY) and gets it.
            await admin.update_queue("jobs", max_read_ct=2)
            (again,) = await asyncio.wait_for(waiting, 5)
            assert (again.id, again.read_ct) == (mid, 2)


async def test_pause_keeps_enqueues_and_stops_claims_until_resumed(dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("jobs")
        async with (Producer(dsn, "jobs", "p", 1) as producer,
                    Consumer(dsn, "jobs", "c", 2, poll_interval=30) as consumer):
            paused = await admin.pause_queue("jobs")
            assert paused.paused and (await admin.get_queue("jobs")).paused
            assert (await admin.pause_queue("jobs")).paused  # idempotent
            ids = await producer.enqueue_batch([{"i": i} for i in range(3)])
            assert await consumer.dequeue(10) == []  # no error, just nothing
            assert await consumer.status() is WorkerStatus.READY  # still registered
            metrics = await admin.queue_metrics("jobs")
            assert (metrics.pending_messages, metrics.dead_messages) == (3, 0)
            waiting = asyncio.create_task(consumer.dequeue(10, wait=10))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            resumed = await admin.resume_queue("jobs")
            assert not resumed.paused
            # Woken by the resume's NOTIFY, long before the 30 s poll interval.
            got = await asyncio.wait_for(waiting, 5)
            assert [m.id for m in got] == ids


async def test_consume_loop_stops_claiming_while_paused_and_restarts_on_resume(
        dsn: str) -> None:
    handled: list[int] = []

    async def handler(message: QueueMessage) -> None:
        handled.append(message.id)

    async with Admin(dsn) as admin:
        await admin.create_queue("jobs")
        async with (Producer(dsn, "jobs", "p", 1) as producer,
                    Consumer(dsn, "jobs", "c", 2, poll_interval=0.1) as consumer):
            stop = asyncio.Event()
            loop = asyncio.create_task(consumer.consume(handler, stop=stop))
            first = await producer.enqueue_batch([{"i": i} for i in range(5)])
            await wait_until(lambda: len(handled) == 5)
            await admin.pause_queue("jobs")
            second = await producer.enqueue_batch([{"i": i} for i in range(5)])
            await asyncio.sleep(1.0)  # several poll cycles
            assert handled == first and not loop.done()
            await admin.resume_queue("jobs")
            await wait_until(lambda: len(handled) == 10)
            assert handled == first + second
            stop.set()
            assert await asyncio.wait_for(loop, 10) == 10


async def test_stop_when_idle_is_not_fooled_by_a_pause(dsn: str) -> None:
    """A paused queue with messages is not idle: the loop waits, then drains on resume."""
    async with Admin(dsn) as admin:
        await admin.create_queue("jobs")
        await admin.pause_queue("jobs")
        async with (Producer(dsn, "jobs", "p", 1) as producer,
                    Consumer(dsn, "jobs", "c", 2, poll_interval=0.1) as consumer):
            await producer.enqueue_batch([{"i": i} for i in range(3)])

            async def handler(message: QueueMessage) -> None:
                pass

            loop = asyncio.create_task(consumer.consume(handler, stop_when_idle=True))
            await asyncio.sleep(0.8)
            assert not loop.done()
            await admin.resume_queue("jobs")
            assert await asyncio.wait_for(loop, 10) == 3


async def test_repository_policy_default_lease_and_paused_due(dsn: str) -> None:
    """The calls the consume loop is wired to: policy(), a NULL lease, a paused due time."""
    async with Admin(dsn) as admin:
        info = await admin.create_queue("jobs", max_read_ct=4, visibility_timeout=90,
                                        retry_backoff_base=2, retry_backoff_max=10)
        async with (Producer(dsn, "jobs", "p", 1) as producer,
                    Consumer(dsn, "jobs", "c", 2) as consumer):
            await producer.enqueue_batch([{"i": i} for i in range(3)])
            worker_id = await consumer.register()
            engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"))
            queues, messages = QueueRepository("public"), MessageRepository("public")
            try:
                async with engine.begin() as conn:
                    policy = await queues.policy(conn, info.id)
                    assert policy == info.policy
                    assert policy is not None and policy.retry_delay(1) == 2.0
                    assert (policy.retry_delay(3), policy.retry_delay(9)) == (8.0, 10.0)
                    assert not policy.is_dead(3) and policy.is_dead(4)
                    assert await queues.policy(conn, 999) is None
                    (m,) = await messages.dequeue(conn, queue_id=info.id, worker_id=worker_id,
                                                  limit=1)  # lease from the queue: 90 s
                    assert m.vt is not None and m.dequeued_at is not None
                    assert (m.vt - m.dequeued_at).total_seconds() == pytest.approx(90)
                    (n,) = await messages.dequeue(conn, queue_id=info.id, worker_id=worker_id,
                                                  limit=1, lease=5)  # per-call override
                    assert n.vt is not None and n.dequeued_at is not None
                    assert (n.vt - n.dequeued_at).total_seconds() == pytest.approx(5)
                    assert await messages.seconds_until_due(conn, queue_id=info.id) == 0.0
                await admin.pause_queue("jobs")
                async with engine.begin() as conn:
                    assert await messages.seconds_until_due(conn, queue_id=info.id) == math.inf
                    assert await messages.dequeue(conn, queue_id=info.id, worker_id=worker_id,
                                                  limit=5) == []
            finally:
                await engine.dispose()


async def test_a_paused_claim_reads_no_message(dsn: str) -> None:
    """The paused check is a one-time filter: the claim does not walk the queue at all."""
    import json

    from sqlalchemy.dialects import postgresql

    from pgqrs.repositories import messages as statements

    async with Admin(dsn) as admin:
        await admin.create_queue("jobs")
        async with (Producer(dsn, "jobs", "p", 1) as producer,
                    Consumer(dsn, "jobs", "c", 2) as consumer):
            await producer.enqueue_batch([{"i": i} for i in range(2000)])
            worker_id = await consumer.register()
            await admin.pause_queue("jobs")
            compiled = statements._DEQUEUE.executable.compile(dialect=postgresql.asyncpg.dialect())
            params = compiled.construct_params({"p_queue_id": 1, "p_worker_id": worker_id,
                                                "p_limit": 10, "p_lease": None})
            args = [params[name] for name in compiled.positiontup or []]
            conn = await asyncpg.connect(dsn)
            try:
                plan = json.loads(await conn.fetchval(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", *args))
            finally:
                await conn.close()

    def nodes(node: dict[str, object]) -> list[dict[str, object]]:
        children = node.get("Plans", [])
        assert isinstance(children, list)
        return [node, *(n for child in children for n in nodes(child))]

    scans = [n for n in nodes(plan[0]["Plan"]) if n.get("Relation Name") == "pgqrs_messages"
             and "Scan" in str(n["Node Type"])]
    assert scans and all(n["Actual Loops"] == 0 for n in scans), json.dumps(plan, indent=1)


async def test_queue_info_keeps_its_first_fields(admin: Admin) -> None:
    info = await admin.create_queue("q")
    assert QueueInfo(info.id, info.queue_name, info.created_at) == info  # defaults = old
    assert QueueInfo.__dataclass_fields__.keys() >= {"paused", "retention"}


async def wait_until(condition: object, timeout: float = 10) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
