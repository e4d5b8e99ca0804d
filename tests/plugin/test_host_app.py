"""A host application's tests, written against the plugin's public fixtures only.

Nothing here uses pgqrs's own conftest fixtures (``dsn``, ``admin``, ...): these tests are
what an application that does ``pytest -p pgqrs.testing`` would write.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from pgqrs import Admin, Consumer, Producer, SchemaNotInstalledError

app_metadata = MetaData()
orders = Table(
    "orders", app_metadata,
    Column("id", Integer, primary_key=True),
    Column("item", String(50), nullable=False),
)


async def test_order_and_its_message_commit_together(pgqrs_engine: AsyncEngine) -> None:
    async with pgqrs_engine.begin() as conn:
        await conn.run_sync(app_metadata.create_all)
    async with Admin(pgqrs_engine) as admin:  # pgqrs is installed already
        await admin.create_queue("order-emails")
    session_factory = async_sessionmaker(pgqrs_engine)

    async with Producer(pgqrs_engine, "order-emails", "shop-api", 8000) as producer:
        async with session_factory() as session, session.begin():
            await session.execute(insert(orders).values(id=1, item="book"))
            await producer.enqueue({"order_id": 1}, session=session)
        with pytest.raises(RuntimeError, match="declined"):
            async with session_factory() as session, session.begin():
                await session.execute(insert(orders).values(id=2, item="pen"))
                await producer.enqueue({"order_id": 2}, session=session)
                raise RuntimeError("payment declined")

    async with pgqrs_engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(orders)) == 1
    async with Consumer(pgqrs_engine, "order-emails", "mailer", 8001) as consumer:
        [message] = await consumer.dequeue(wait=1)
        assert message.payload == {"order_id": 1}
        assert await consumer.archive(message.id)
        assert await consumer.dequeue() == []


@pytest.mark.parametrize("attempt", [1, 2])
async def test_every_test_gets_a_fresh_database(pgqrs_engine: AsyncEngine, attempt: int) -> None:
    # Whichever attempt runs second would see the first one's table and queue if the
    # database were shared.
    async with pgqrs_engine.begin() as conn:
        assert await conn.scalar(text("SELECT to_regclass('leftover')")) is None
        await conn.execute(text("CREATE TABLE leftover (attempt int)"))
    async with Admin(pgqrs_engine) as admin:
        assert await admin.list_queues() == []
        await admin.create_queue("only-mine")


async def test_dsn_is_a_clone_of_the_template(pgqrs_dsn: str, pgqrs_template: str,
                                              pgqrs_server_dsn: str, pgqrs_schema: str) -> None:
    assert pgqrs_schema == "public"
    assert pgqrs_dsn.rsplit("/", 1)[1] != pgqrs_template.rsplit("/", 1)[1]
    assert pgqrs_dsn.startswith("postgresql://") and pgqrs_server_dsn.startswith("postgresql://")
    async with Admin(pgqrs_dsn) as admin:
        revision = await admin.verify()
    async with Admin(pgqrs_template) as admin:
        assert await admin.verify() == revision


async def test_empty_dsn_has_no_pgqrs_until_installed(pgqrs_empty_dsn: str) -> None:
    async with Admin(pgqrs_empty_dsn) as admin:
        with pytest.raises(SchemaNotInstalledError):
            await admin.verify()
        await admin.install()
        assert await admin.verify()
