"""The seed's "FastAPI Integration" pattern, written for an app that owns its engine.

The producer shares the application's engine and is opened and closed by the app's
lifespan; the endpoint writes a row of the app's own model and enqueues a message in the
same transaction (the outbox pattern): both exist, or neither does. The pgqrs dashboard is
mounted at /pgqrs on the same engine, read-only (needs ``pip install 'pgqrs[dashboard]'``).

Run it: PGQRS_DSN=postgresql://localhost/mydb uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import BigInteger, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import pgqrs.dashboard
from pgqrs import Admin, Producer, QueueAlreadyExistsError

DSN = os.environ.get("PGQRS_DSN", "postgresql://localhost/mydb")
engine = create_async_engine(DSN.replace("postgresql://", "postgresql+asyncpg://", 1))
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class TaskRecord(Base):
    """The application's own table."""

    __tablename__ = "task_records"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    task_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)


producer: Producer | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global producer
    async with engine.begin() as conn:  # in a real app: alembic upgrade head
        await conn.run_sync(Base.metadata.create_all)
    admin = Admin(engine)
    await admin.install()
    with contextlib.suppress(QueueAlreadyExistsError):  # a restart finds it there
        await admin.create_queue("tasks")
    producer = Producer(engine, "tasks", "api-server", 8000)
    yield
    await producer.close()  # marks the worker stopped; the engine stays the app's
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
# Queues, dead letters and workers at /pgqrs/, on the app's engine (pgqrs never disposes
# it). Read-only: pass actions=True to allow replay, suspend, ... and put it behind the
# app's own authentication before exposing it.
app.mount("/pgqrs", pgqrs.dashboard.app(engine))


class TaskRequest(BaseModel):
    task_type: str
    data: dict[str, Any]


@app.post("/tasks")
async def create_task(request: TaskRequest) -> dict[str, Any]:
    if not producer:
        raise HTTPException(status_code=503, detail="Producer not ready")

    async with Session() as session, session.begin():
        record = TaskRecord(task_type=request.task_type, data=request.data)
        session.add(record)
        await session.flush()  # assigns record.id
        msg_id = await producer.enqueue(
            {"task_id": record.id, "task_type": request.task_type, "data": request.data},
            session=session,
        )
        if request.task_type == "reject":
            # Anything raised inside the block rolls back the row *and* the message.
            raise HTTPException(status_code=422, detail="task type rejected")

    return {"task_id": record.id, "message_id": msg_id, "status": "queued"}
