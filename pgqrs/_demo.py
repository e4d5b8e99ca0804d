"""``pgqrs demo``: the seed's full example, end to end, narrated.

With a DSN it uses that database; without one it starts a throw-away PostgreSQL
(``pgqrs.testing.EphemeralPostgres``, configured by ``PGQRS_PG_BINDIR``,
``PGQRS_PG_TMPDIR`` and ``PGQRS_PG_USER``) and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TextIO

from pgqrs import errors
from pgqrs.admin import Admin
from pgqrs.consumer import Consumer
from pgqrs.producer import Producer

QUEUE = "pgqrs_demo"


@contextlib.contextmanager
def _database(dsn: str | None, out: TextIO) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from pgqrs.testing import EphemeralPostgres, EphemeralPostgresError

    try:
        server = EphemeralPostgres.from_env()
        server.start()
    except EphemeralPostgresError as exc:
        raise errors.ConfigurationError(str(exc).splitlines()[0]) from exc
    out.write(f"No DSN given: started a throw-away PostgreSQL {server.version} from "
              f"{server.bindir} at {server.dsn}\n")
    try:
        yield server.dsn
    finally:
        server.stop()
        out.write("Stopped the throw-away PostgreSQL and removed its data directory.\n")


async def run(dsn: str | None, *, schema: str | None = None, out: TextIO) -> None:
    """Install, create a queue, enqueue five messages, consume and archive them."""
    with _database(dsn, out) as url:
        async with Admin(url, schema=schema) as admin:
            await admin.install()
            out.write(f"Installed the pgqrs schema (revision {await admin.verify()}).\n")
            try:
                await admin.create_queue(QUEUE)
                out.write(f"Created queue {QUEUE!r}.\n")
            except errors.QueueAlreadyExistsError:
                out.write(f"Queue {QUEUE!r} already exists; using it.\n")
            port = os.getpid() % 60000 + 1024
            async with Producer(url, QUEUE, "demo-producer", port, schema=schema) as producer:
                for i in range(5):
                    msg_id = await producer.enqueue(
                        {"task_id": i, "action": "process", "data": {"value": i * 10}}
                    )
                    out.write(f"Sent task {i}: message ID {msg_id}\n")
            async with Consumer(url, QUEUE, "demo-consumer", port, schema=schema) as consumer:
                done = 0
                while batch := await consumer.dequeue(limit=10):
                    for message in batch:
                        out.write(f"Processed message {message.id}: {message.payload}\n")
                    archived = await consumer.archive_batch([m.id for m in batch])
                    done += sum(archived)
                out.write(f"Archived {done} messages.\n")
            metrics = await admin.queue_metrics(QUEUE)
            out.write(f"Queue {QUEUE!r}: {metrics.pending_messages} pending, "
                      f"{metrics.archived_messages} archived.\n")
