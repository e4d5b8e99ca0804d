"""``Producer(admin, ...)`` / ``Consumer(admin, ...)``: shared engine, registration on time."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from pgqrs import (
    Admin,
    ConfigurationError,
    Consumer,
    Producer,
    QueueNotFoundError,
    ValidationError,
    WorkerAlreadyExistsError,
    WorkerStatus,
)


async def worker_count(dsn: str) -> int:
    """Workers as another process sees them (a fresh Admin has no pending clients)."""
    async with Admin(dsn) as other:
        return await (await other.get_workers()).count()


def test_construction_does_no_io() -> None:
    admin = Admin("postgresql://nobody@127.0.0.1:1/nowhere")  # nothing listens there
    producer = Producer(admin, "tasks", "h", 1)
    consumer = Consumer(admin, "tasks", "h", 2)
    assert producer.worker_id is None and consumer.worker_id is None


async def test_clients_show_up_at_the_admins_next_call(dsn: str, admin: Admin,
                                                       queue: str) -> None:
    producer = Producer(admin, queue, "prod_host", 5000)
    consumer = Consumer(admin, queue, "cons_host", 5001)
    assert await worker_count(dsn) == 0  # nothing was written by the constructors
    workers = await admin.get_workers()
    assert await workers.count() == 2
    by_host = {w.hostname: w for w in await workers.list()}
    assert (by_host["prod_host"].port, by_host["cons_host"].port) == (5000, 5001)
    assert by_host["prod_host"].status == WorkerStatus.Ready
    assert (await workers.get(by_host["prod_host"].id)).hostname == "prod_host"
    assert producer.worker_id == by_host["prod_host"].id
    assert consumer.worker_id == by_host["cons_host"].id
    await producer.close()
    await consumer.close()


@pytest.mark.parametrize("call", ["system_stats", "list_queues", "queues", "messages",
                                  "archive", "health"])
async def test_every_admin_read_registers_first(dsn: str, admin: Admin, queue: str,
                                                call: str) -> None:
    async with Consumer(admin, queue, "worker_host", 1) as consumer:
        if call == "system_stats":
            assert (await admin.system_stats()).total_workers == 1
        elif call == "list_queues":
            await admin.list_queues()
        elif call == "queues":
            assert await (await admin.get_queues()).count() == 1
        elif call == "messages":
            assert await (await admin.get_messages()).count() == 0
        elif call == "archive":
            assert await (await admin.get_archive()).count() == 0
        else:
            (health,) = await admin.worker_health_stats(60)
            assert health.ready_workers == 1
        assert consumer.worker_id is not None
        assert await worker_count(dsn) == 1


async def test_concurrent_admin_calls_all_see_the_clients(admin: Admin, queue: str) -> None:
    clients = [Consumer(admin, queue, "h", port) for port in range(1, 6)]
    workers = await admin.get_workers()
    counts = await asyncio.gather(*(workers.count() for _ in range(4)))
    assert counts == [5, 5, 5, 5]
    for client in clients:
        await client.close()


async def test_clients_share_the_admins_engine_and_schema(dsn: str) -> None:
    async with Admin(dsn, schema="compat_shared") as admin:
        await admin.install()
        await admin.create_queue("jobs")
        async with Producer(admin, "jobs", "p", 1) as producer:
            assert producer.settings is admin.settings
            assert producer._db.engine is admin._db.engine
            await producer.enqueue({"n": 1})
        # Closing the client left the Admin's engine alone.
        assert await (await admin.get_messages()).count() == 1
        async with Producer(admin, "jobs", "p", 1) as again:
            await again.enqueue({"n": 2})
        assert await (await admin.get_messages()).count() == 2
    async with Admin(dsn) as public:
        assert await (await public.get_messages()).count() == 0


async def test_a_host_engine_is_shared_and_never_disposed(dsn: str, queue: str) -> None:
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with Admin(engine) as admin, Producer(admin, queue, "p", 1) as producer:
            assert producer._db.engine is engine
            await producer.enqueue({"n": 1})
        async with Admin(engine) as admin:  # both closed; the engine still works
            assert await (await admin.get_messages()).count() == 1
    finally:
        await engine.dispose()


async def test_clients_may_set_their_own_client_options(admin: Admin, queue: str) -> None:
    async with Producer(admin, queue, "p", 1, rate_limit=1000, heartbeat_interval=1) as p:
        assert (p.settings.rate_limit, p.settings.heartbeat_interval) == (1000, 1)
        assert p.settings.schema == admin.schema
        assert isinstance(await p.enqueue({"n": 1}), int)
    assert admin.settings.rate_limit is None


@pytest.mark.parametrize("option", [{"schema": "other"}, {"pool_size": 3},
                                    {"pgbouncer": True}, {"connect_timeout": 1}])
def test_engine_options_belong_to_the_admin(option: dict[str, object]) -> None:
    admin = Admin("postgresql://localhost/mydb")
    with pytest.raises(ConfigurationError, match="shares the Admin's engine and schema"):
        Producer(admin, "tasks", "p", 1, **option)


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="Unknown option"):
        Consumer(Admin("postgresql://localhost/mydb"), "tasks", "c", 1, colour="red")


async def test_unregistrable_client_does_not_break_the_admin(admin: Admin, queue: str) -> None:
    missing = Producer(admin, "no-such-queue", "p", 1)
    live = Consumer(admin, queue, "same", 7)
    duplicate = Consumer(admin, queue, "same", 7)
    assert await (await admin.get_workers()).count() == 1  # the Admin call still works
    with pytest.raises(QueueNotFoundError):
        await missing.enqueue({"n": 1})  # the client reports its own problem...
    with pytest.raises(WorkerAlreadyExistsError):
        await duplicate.dequeue()  # ...at its first use
    await live.close()
    await missing.close()
    await duplicate.close()


async def test_closed_or_rejected_clients_never_register(dsn: str, admin: Admin,
                                                         queue: str) -> None:
    closed = Producer(admin, queue, "p", 1)
    await closed.close()
    with pytest.raises(ValidationError, match="visibility_timeout"):
        Consumer(admin, queue, "c", 2, visibility_timeout=-1)
    assert await (await admin.get_workers()).count() == 0
    assert await worker_count(dsn) == 0


async def test_reclaim_messages_accepts_older_than_seconds(admin: Admin, queue: str) -> None:
    async with (Producer(admin, queue, "p", 1) as producer,
                Consumer(admin, queue, "slow", 2, heartbeat_interval=60) as silent):
        mid = await producer.enqueue({"n": 1})
        assert [m.id for m in await silent.dequeue()] == [mid]
        await asyncio.sleep(0.3)
        assert await admin.reclaim_messages(queue, older_than_seconds=0.2) == 1
        assert (await admin.get_worker(silent.worker_id or 0)).status == WorkerStatus.Stopped
        async with Consumer(admin, queue, "rescuer", 3) as rescuer:
            assert [m.id for m in await rescuer.dequeue()] == [mid]
        with pytest.raises(ValidationError, match="not both"):
            await admin.reclaim_messages(queue, 1.0, older_than_seconds=1.0)


def test_worker_status_has_the_original_member_names() -> None:
    assert WorkerStatus.Ready is WorkerStatus.READY
    assert WorkerStatus.Suspended is WorkerStatus.SUSPENDED
    assert WorkerStatus.Stopped is WorkerStatus.STOPPED
    assert list(WorkerStatus) == [WorkerStatus.READY, WorkerStatus.SUSPENDED,
                                  WorkerStatus.STOPPED]
    assert WorkerStatus("ready") is WorkerStatus.Ready and WorkerStatus.Ready == "ready"
