"""Synchronous entry points for applications that are not async (Flask, Django, scripts).

They take the application's synchronous SQLAlchemy ``Engine`` (any PostgreSQL driver:
psycopg, psycopg2, ...) and are the async clients themselves, ``pgqrs.Admin`` and
``pgqrs.Producer``, run on a backend that answers their database calls with that engine
(``_db.SyncDatabase``). Each method is a one-line twin of the async one, running its
coroutine on the calling thread's own event loop (``_loop``): there is one
implementation, and a feature added to an async client reaches its sync twin through it
(a test fails while a public coroutine method has no twin). They work in the threads of
a synchronous web server; called from inside a running event loop, they raise
``ConfigurationError``.

Example:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session
    import pgqrs.sync

    engine = create_engine("postgresql+psycopg://localhost/mydb")
    pgqrs.sync.Admin(engine).install()
    producer = pgqrs.sync.Producer(engine, "emails", "web-1", 8000)
    with Session(engine) as session, session.begin():
        session.add(order)
        producer.enqueue({"order_id": order.id}, session=session)  # same transaction
"""

from __future__ import annotations

from pgqrs.sync._accessors import Archive, Messages, Queues, Workers
from pgqrs.sync._admin import Admin
from pgqrs.sync._producer import Producer

__all__ = ["Admin", "Archive", "Messages", "Producer", "Queues", "Workers"]
