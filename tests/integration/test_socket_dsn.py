"""libpq-style DSNs keep working: a Unix socket directory via ``host=``, ``sslmode``."""

from __future__ import annotations

from pgqrs import Admin, Consumer, Producer
from pgqrs.testing import EphemeralPostgres


async def test_unix_socket_dsn_with_libpq_parameters() -> None:
    with EphemeralPostgres(tcp=False) as server:
        dsn = server.dsn + "&sslmode=disable&connect_timeout=5&application_name=pgqrs-test"
        assert "host=/" in dsn
        async with Admin(dsn) as admin:
            await admin.install()
            await admin.create_queue("q")
        async with Producer(dsn, "q", "p", 1) as producer, Consumer(dsn, "q", "c", 2) as c:
            await producer.enqueue({"via": "socket"})
            (message,) = await c.dequeue(wait=1)
            assert message.payload == {"via": "socket"}
            assert await c.archive(message.id)
