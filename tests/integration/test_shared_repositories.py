"""Repositories are shared per schema, and the fast path's cache does not grow with use."""

from __future__ import annotations

from pgqrs import Consumer, Producer
from pgqrs.repositories import Statement, archive, messages, workers


def _cache_sizes() -> dict[int, int]:
    return {id(value): len(value._compiled) for module in (messages, workers, archive)
            for value in vars(module).values() if isinstance(value, Statement)}


async def test_fast_path_cache_is_bounded_by_the_declared_statements(dsn: str,
                                                                     queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as consumer:
        await producer.enqueue({"warm": "up"})
        (first,) = await consumer.dequeue()
        assert await consumer.archive(first.id)
        warm = _cache_sizes()
        assert messages._ENQUEUE._compiled  # the fast path was taken
        for i in range(30):
            await producer.enqueue({"i": i})
            (message,) = await consumer.dequeue()
            assert await consumer.archive(message.id)
        assert _cache_sizes() == warm
        schemas = {schema for key in messages._ENQUEUE._compiled for schema in key[:1]}
        assert "public" in schemas
