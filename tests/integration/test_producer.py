from __future__ import annotations

import asyncpg
import pytest

from pgqrs import Admin, Consumer, Producer, QueueNotFoundError, StateError, ValidationError


async def count_messages(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pgqrs_messages"))
    finally:
        await conn.close()


async def test_enqueue_returns_increasing_ids_and_stores_payload(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        first = await producer.enqueue({"n": 1, "s": "héllo ✓", "nested": {"a": [1, 2]}})
        second = await producer.enqueue({"n": 2})
    assert second > first
    async with Admin(dsn) as admin:
        message = await (await admin.get_messages()).get(first)
    assert message is not None
    assert message.payload == {"n": 1, "s": "héllo ✓", "nested": {"a": [1, 2]}}
    assert message.read_ct == 0 and message.producer_worker_id == producer.worker_id


def test_construction_does_no_io() -> None:
    # An unreachable server: constructing must still succeed (the seed builds producers
    # synchronously at import time).
    producer = Producer("postgresql://nobody@127.0.0.1:1/none", "tasks", "h", 1)
    assert producer.worker_id is None


async def test_unknown_queue_is_reported_on_first_use(dsn: str) -> None:
    async with Producer(dsn, "missing", "p", 1) as producer:
        with pytest.raises(QueueNotFoundError, match="missing"):
            await producer.enqueue({"a": 1})


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ([1, 2], "must be a dict"),
        ("text", "must be a dict"),
        ({"x": float("nan")}, "NaN"),
        ({"x": float("inf")}, "Infinity"),
        ({"x": object()}, "not JSON-serialisable"),
        ({"x": {1, 2}}, "not JSON-serialisable"),
        ({"x": b"bytes"}, "not JSON-serialisable"),
        ({1: "int key"}, "JSON keys must be str"),
        ({"x": "nul\x00byte"}, "NUL"),
        ({"x": "a" * (1024 * 1024 + 1)}, "over the limit"),
    ],
)
async def test_invalid_payloads_are_rejected_before_sql(dsn: str, queue: str, payload: object,
                                                       fragment: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        with pytest.raises(ValidationError, match=fragment):
            await producer.enqueue(payload)  # type: ignore[arg-type]
        assert producer.worker_id is None  # nothing ran, not even registration
    assert await count_messages(dsn) == 0


async def test_depth_limit_is_configurable(dsn: str, queue: str) -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(10):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    async with Producer(dsn, queue, "p", 1, max_payload_depth=5) as producer:
        with pytest.raises(ValidationError, match="nested deeper than 5"):
            await producer.enqueue(deep)
    async with Producer(dsn, queue, "p2", 1) as producer:
        assert await producer.enqueue(deep) > 0


async def test_batch_is_one_statement_all_or_nothing_in_order(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        assert await producer.enqueue_batch([]) == []
        ids = await producer.enqueue_batch([{"i": i} for i in range(50)])
        assert ids == sorted(ids) and len(set(ids)) == 50
        with pytest.raises(ValidationError, match=r"payloads\[2\]"):
            await producer.enqueue_batch([{"ok": 1}, {"ok": 2}, {"bad": float("nan")}])
    assert await count_messages(dsn) == 50
    async with Consumer(dsn, queue, "c", 2) as consumer:
        got = await consumer.dequeue(50)
    assert [m.payload["i"] for m in got] == list(range(50))
    assert [m.id for m in got] == ids


async def test_delayed_message_is_invisible_until_due(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as consumer:
        await producer.enqueue_delayed({"later": True}, 1)
        await producer.enqueue({"later": False}, delay=0.5)
        assert await consumer.dequeue(5) == []
        import asyncio

        await asyncio.sleep(1.2)
        got = await consumer.dequeue(5)
        assert sorted(m.payload["later"] for m in got) == [False, True]


async def test_bad_delay_is_rejected(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        with pytest.raises(ValidationError, match="delay"):
            await producer.enqueue({"a": 1}, delay=-1)
        with pytest.raises(ValidationError, match="delay"):
            await producer.enqueue_batch([{"a": 1}], delay=float("nan"))


async def test_stopped_producer_does_not_enqueue(dsn: str, queue: str) -> None:
    producer = Producer(dsn, queue, "p", 1)
    await producer.enqueue({"a": 1})
    await producer.shutdown()
    with pytest.raises(StateError, match="shut down"):
        await producer.enqueue({"a": 2})
    await producer.close()
    assert await count_messages(dsn) == 1


async def test_rate_limit_waits_and_lets_big_batches_through(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1, rate_limit=1000, rate_burst=5) as producer:
        ids = await producer.enqueue_batch([{"i": i} for i in range(20)])
        assert len(ids) == 20
        assert await producer.enqueue({"after": True}) > ids[-1]
