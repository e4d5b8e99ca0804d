"""New pgqrs on a schema it has outgrown: a clear, typed error that says to upgrade.

Clients do not check the schema revision on every call (an old client must keep working
while the schema is upgraded under it); a new client on an old schema meets columns the
server does not know, and must say so in pgqrs's terms, leaving nothing behind.
"""

from __future__ import annotations

import pytest
from test_0002_queue_policy import migrate_to, sql

from pgqrs import Admin, Producer, SchemaVersionMismatchError


async def test_enqueue_on_a_schema_before_message_options_says_to_upgrade(
        empty_dsn: str) -> None:
    await migrate_to(empty_dsn, "pgqrs_0002")
    await sql(empty_dsn, "INSERT INTO pgqrs_queues (queue_name) VALUES ('old')")
    producer = Producer(empty_dsn, "old", "old-schema-host", 1)
    try:
        with pytest.raises(SchemaVersionMismatchError) as raised:
            await producer.enqueue({"n": 1}, priority=5)
    finally:
        await producer.close()
    message = str(raised.value)
    assert "older than this version of pgqrs" in message
    assert "pgqrs install" in message
    rows = await sql(empty_dsn, "SELECT count(*) AS n FROM pgqrs_messages")
    assert rows[0]["n"] == 0

    # Upgrading is the cure the message names.
    await Admin(empty_dsn).install()
    async with Producer(empty_dsn, "old", "old-schema-host", 2) as upgraded:
        assert await upgraded.enqueue({"n": 1}, priority=5) > 0
