"""pgqrs inside a host SQLAlchemy application: shared engine, lent sessions, schemas."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import BigInteger, String, create_engine, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import pgqrs.sync
from pgqrs import Admin, Consumer, Producer


class HostBase(DeclarativeBase):
    pass


class Order(HostBase):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    item: Mapped[str] = mapped_column(String(50))


def async_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


@pytest.fixture
async def engine(dsn: str) -> AsyncEngine:
    eng = create_async_engine(async_url(dsn))
    async with eng.begin() as conn:
        await conn.run_sync(HostBase.metadata.create_all)
    yield eng  # type: ignore[misc]
    await eng.dispose()


async def test_shared_engine_is_used_and_left_alone(engine: AsyncEngine, queue: str) -> None:
    options_before = dict(engine.get_execution_options())
    async with Producer(engine, queue, "p", 1) as producer:
        await producer.enqueue({"a": 1})
    async with Consumer(engine, queue, "c", 2) as consumer:
        (message,) = await consumer.dequeue()
        assert await consumer.archive(message.id)
    # pgqrs neither disposed nor reconfigured the host's engine
    assert dict(engine.get_execution_options()) == options_before
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1


async def test_enqueue_joins_the_session_transaction(engine: AsyncEngine, dsn: str,
                                                     queue: str) -> None:
    sessions = async_sessionmaker(engine)
    async with Producer(engine, queue, "p", 1) as producer:
        async with sessions() as session, session.begin():
            session.add(Order(id=1, item="book"))
            await producer.enqueue({"order_id": 1}, session=session)
        assert await count(dsn, "SELECT count(*) FROM pgqrs_messages") == 1

        async with sessions() as session:
            await session.begin()
            session.add(Order(id=2, item="pen"))
            await producer.enqueue_batch([{"order_id": 2}, {"order_id": 2}], session=session)
            await session.rollback()
        with pytest.raises(ZeroDivisionError):
            async with sessions() as session, session.begin():
                session.add(Order(id=3, item="cup"))
                await producer.enqueue({"order_id": 3}, session=session)
                1 / 0  # noqa: B018
    assert await count(dsn, "SELECT count(*) FROM pgqrs_messages") == 1
    assert await count(dsn, "SELECT count(*) FROM orders") == 1


async def test_pgqrs_never_commits_a_lent_session_or_connection(engine: AsyncEngine, dsn: str,
                                                               queue: str) -> None:
    async with Producer(engine, queue, "p", 1) as producer:
        session = AsyncSession(engine)
        await producer.enqueue({"x": 1}, session=session)
        assert session.in_transaction()
        await session.rollback()
        await session.close()
        async with engine.connect() as conn:
            await producer.enqueue({"x": 2}, connection=conn)
            assert conn.in_transaction()
            await conn.rollback()
    assert await count(dsn, "SELECT count(*) FROM pgqrs_messages") == 0


async def test_install_on_a_lent_connection_is_the_callers_to_commit(empty_dsn: str) -> None:
    eng = create_async_engine(async_url(empty_dsn))
    try:
        admin = Admin(eng)
        async with eng.connect() as conn:
            await admin.install(connection=conn)
            await conn.rollback()
        assert await count(empty_dsn, "SELECT count(*) FROM pg_tables "
                                      "WHERE tablename LIKE 'pgqrs%'") == 0
        async with eng.begin() as conn:
            await admin.install(connection=conn)
        assert await admin.verify()
    finally:
        await eng.dispose()


async def test_custom_schema_on_a_lent_session(empty_dsn: str) -> None:
    eng = create_async_engine(async_url(empty_dsn))
    try:
        async with Admin(eng, schema="jobs") as admin:
            await admin.install()
            await admin.create_queue("q")
        async with (Producer(eng, "q", "p", 1, schema="jobs") as producer,
                    AsyncSession(eng) as session, session.begin()):
            await producer.enqueue({"in": "jobs"}, session=session)
            # the session is not reconfigured: its search_path is untouched
            path = (await session.execute(text("SHOW search_path"))).scalar()
            assert path == '"$user", public'
        async with Consumer(eng, "q", "c", 2, schema="jobs") as consumer:
            (message,) = await consumer.dequeue()
            assert message.payload == {"in": "jobs"}
            assert await consumer.archive(message.id)
        assert await count(empty_dsn, "SELECT count(*) FROM jobs.pgqrs_archive") == 1
        assert await count(empty_dsn, "SELECT count(*) FROM pg_class c JOIN pg_namespace n "
                                      "ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                                      "AND relname LIKE 'pgqrs%'") == 0
    finally:
        await eng.dispose()


def test_sync_facade_enqueues_in_a_sync_session(empty_dsn: str) -> None:
    eng = create_engine(empty_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        HostBase.metadata.create_all(eng)
        admin = pgqrs.sync.Admin(eng)
        admin.install()
        assert admin.verify()
        admin.create_queue("emails")
        with pgqrs.sync.Producer(eng, "emails", "web", 8000) as producer:
            with Session(eng) as session, session.begin():
                session.add(Order(id=1, item="book"))
                first = producer.enqueue({"order_id": 1}, session=session)
            with Session(eng) as session:
                session.begin()
                producer.enqueue_batch([{"order_id": 2}, {"order_id": 3}], session=session)
                session.rollback()
            ids = producer.enqueue_batch([{"n": 1}, {"n": 2}])
            assert first < ids[0] < ids[1]
        with eng.connect() as conn:
            payloads = conn.execute(text("SELECT payload FROM pgqrs_messages ORDER BY id")).all()
            assert [p[0] for p in payloads] == [{"order_id": 1}, {"n": 1}, {"n": 2}]
            status = conn.execute(text("SELECT status::text FROM pgqrs_workers")).scalar()
            assert status == "stopped"
    finally:
        eng.dispose()


def test_sync_facade_rejects_an_async_engine(dsn: str) -> None:
    eng = create_async_engine(async_url(dsn))
    with pytest.raises(pgqrs.ConfigurationError, match="synchronous SQLAlchemy Engine"):
        pgqrs.sync.Producer(eng, "q", "h", 1)  # type: ignore[arg-type]
    with pytest.raises(pgqrs.ConfigurationError, match="AsyncEngine"):
        Producer(create_engine("postgresql+psycopg://localhost/x"), "q", "h", 1)  # type: ignore[arg-type]
