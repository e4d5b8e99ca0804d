"""Scenario 8: a least-privilege role that can use queues but cannot change the schema.

The schema is installed by its owner; the application role ``pgqrs_app`` (password login)
gets exactly the grants in ``docs/reliability.md`` and nothing else. pgqrs works under it;
DDL is refused; and when a grant is missing, the call fails with a ``DatabaseError`` that
says "Permission denied" and names the table, and writes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pgqrs import Admin, Consumer, DatabaseError, PgqrsError, Producer, QueueMessage

from .support import AuthServer, execute, install_fresh, scalar, sql, table_counts, with_netloc

ROLE, PASSWORD = "pgqrs_app", "app-secret-pw"

# Kept in sync with docs/reliability.md ("Least-privilege setup").
GRANTS = """
REVOKE ALL ON DATABASE {db} FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE {db} TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON pgqrs_queues, pgqrs_alembic_version TO {role};
GRANT UPDATE (created_at) ON pgqrs_queues TO {role};
GRANT SELECT, INSERT, UPDATE ON pgqrs_workers TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqrs_messages TO {role};
GRANT SELECT, INSERT ON pgqrs_archive TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqrs_groups TO {role};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};
"""


@pytest.fixture
async def app(auth_server: AuthServer) -> AsyncIterator[tuple[str, str]]:
    """(owner DSN, application-role DSN) of a fresh database with pgqrs installed."""
    owner = await install_fresh(auth_server.dsn, "pgqrs_priv", "tasks")
    await auth_server.create_role(ROLE, PASSWORD)
    await execute(owner, GRANTS.format(db="pgqrs_priv", role=ROLE))
    yield owner, with_netloc(owner, user=ROLE, password=PASSWORD)
    await sql(auth_server.dsn, 'DROP DATABASE IF EXISTS "pgqrs_priv" WITH (FORCE)')
    await sql(auth_server.dsn, f"DROP ROLE IF EXISTS {ROLE}")


@pytest.mark.timeout(60)
async def test_queue_works_under_the_least_privileged_role(app: tuple[str, str]) -> None:
    owner, dsn = app
    async with Admin(owner) as owner_admin:  # the queue's rules are the owner's to change
        await owner_admin.update_queue("tasks", max_read_ct=2)
    assert await scalar(dsn, "SELECT current_user") == ROLE
    async with Admin(dsn) as admin:
        assert await admin.verify()
        assert [q.queue_name for q in await admin.list_queues()] == ["tasks"]
        await admin.install()  # already at head: a no-op that needs no DDL rights
    async with Producer(dsn, "tasks", "app-p", 1) as producer, \
            Consumer(dsn, "tasks", "app-c", 2, max_read_ct=2) as consumer:  # checked: equal
        ids = await producer.enqueue_batch([{"i": i} for i in range(20)])
        await producer.enqueue({"one": True}, delay=0)
        got = await consumer.dequeue(5)
        assert await consumer.archive_batch([m.id for m in got]) == [True] * 5
        (m,) = await consumer.dequeue(1)
        assert await consumer.extend_visibility(m.id, 60)
        assert await consumer.release([m.id]) == 1
        (m,) = await consumer.dequeue(1)
        assert await consumer.delete(m.id)
        await consumer.heartbeat()
        await consumer.suspend()
        await consumer.resume()

        async def handler(message: QueueMessage) -> None:
            if message.payload.get("i") == 7:
                raise RuntimeError("dead letter please")

        done = 0
        for _ in range(100):
            done += await consumer.consume(handler, poll_interval=0.05, backoff_base=0.01,
                                           stop_when_idle=True)
            if not await scalar(owner, "SELECT count(*) FROM pgqrs_messages"):
                break
            await asyncio.sleep(0.05)
        assert done == 14
    archived = await sql(owner, "SELECT original_msg_id, dead_letter FROM pgqrs_archive")
    assert len(archived) == 20
    assert [r[0] for r in archived if r[1]] == [ids[7]]
    statuses = await sql(owner, "SELECT status::text FROM pgqrs_workers")
    assert {r[0] for r in statuses} == {"stopped"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ddl", [
    "ALTER TABLE pgqrs_messages ADD COLUMN evil int",
    "DROP TABLE pgqrs_archive",
    "CREATE TABLE public.evil (x int)",
    "CREATE INDEX evil ON pgqrs_messages (vt)",
    "TRUNCATE pgqrs_messages",
    "DELETE FROM pgqrs_queues",
    "UPDATE pgqrs_alembic_version SET version_num = 'x'",
    "CREATE SCHEMA evil",
    "ALTER TYPE worker_status ADD VALUE 'evil'",
])
async def test_role_cannot_change_the_schema(app: tuple[str, str], ddl: str) -> None:
    owner, dsn = app
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(ddl)
    finally:
        await conn.close()
    assert await scalar(owner, "SELECT count(*) FROM pgqrs_queues") == 1


async def _revoke(owner: str, what: str) -> None:
    await execute(owner, f"REVOKE {what} FROM {ROLE}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("revoke", "table", "action"), [
    ("INSERT ON pgqrs_messages", "pgqrs_messages", "enqueue"),
    ("USAGE ON SEQUENCE pgqrs_messages_id_seq", "pgqrs_messages_id_seq", "enqueue"),
    ("UPDATE ON pgqrs_messages", "pgqrs_messages", "dequeue"),
    ("DELETE ON pgqrs_messages", "pgqrs_messages", "archive"),
    ("INSERT ON pgqrs_archive", "pgqrs_archive", "archive"),
    ("INSERT ON pgqrs_workers", "pgqrs_workers", "register"),
    ("SELECT ON pgqrs_queues", "pgqrs_queues", "register"),
    ("SELECT ON pgqrs_alembic_version", "pgqrs_alembic_version", "verify"),
])
async def test_missing_grant_gives_a_clear_error_and_writes_nothing(
        app: tuple[str, str], revoke: str, table: str, action: str) -> None:
    owner, dsn = app
    held: list[int] = []
    async with Producer(owner, "tasks", "owner-p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(3)])
    consumer = Consumer(dsn, "tasks", "app-c", 2)
    producer = Producer(dsn, "tasks", "app-p", 3)
    if action in ("dequeue", "archive"):
        await consumer.register()
    if action == "enqueue":
        await producer.register()
    if action == "archive":
        held = [m.id for m in await consumer.dequeue(3)]
        assert len(held) == 3
    await _revoke(owner, revoke)
    before = await table_counts(owner)
    newcomer = Producer(dsn, "tasks", "app-p", 4)
    admin = Admin(dsn)
    calls: dict[str, Any] = {
        "enqueue": lambda: producer.enqueue_batch([{"x": 1}] * 5),
        "dequeue": lambda: consumer.dequeue(3),
        "archive": lambda: consumer.archive_batch(held),
        "register": newcomer.register,
        "verify": admin.verify,
    }
    try:
        with pytest.raises(PgqrsError) as info:
            await calls[action]()
        error = info.value
        assert type(error) is DatabaseError, repr(error)
        text = str(error)
        assert "Permission denied" in text and table in text, text
        assert "grant" in text.lower(), text
        assert await table_counts(owner) == before, "a refused call wrote something"
        if held:
            rows = await sql(owner, "SELECT consumer_worker_id FROM pgqrs_messages")
            assert {r[0] for r in rows} == {consumer.worker_id}, "archive moved some rows"
    finally:
        for obj in (consumer, producer, newcomer, admin):
            await obj.close()


@pytest.mark.timeout(60)
async def test_install_without_ddl_rights_is_a_clear_error(app: tuple[str, str]) -> None:
    owner, dsn = app
    before = await sql(owner, "SELECT nspname FROM pg_namespace ORDER BY 1")
    with pytest.raises(DatabaseError, match="Permission denied"):
        async with Admin(dsn, schema="jobs") as admin:
            await admin.install()
    with pytest.raises(DatabaseError, match="Permission denied"):
        async with Admin(dsn) as admin:
            await admin.create_queue("new-queue")
    assert await sql(owner, "SELECT nspname FROM pg_namespace ORDER BY 1") == before
    assert await scalar(owner, "SELECT count(*) FROM pgqrs_queues") == 1
