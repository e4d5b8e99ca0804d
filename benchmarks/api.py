"""The duck-typed client API every benchmarked system offers, and nothing else.

Scenarios (``benchmarks.scenarios``) are written once against these protocols and run
for pgqrs, for both floors and, in their own virtualenvs, for the peers
(``benchmarks.peers``). So this module, like ``scenarios``, imports neither pgqrs nor
SQLAlchemy: a peer's virtualenv has the peer, asyncpg and the standard library only.

The API is pgqrs's: ``producer.enqueue(dict)``, ``producer.enqueue_batch(list)``,
``consumer.dequeue(limit)``, ``consumer.archive_batch(ids)``, ``consumer.consume(...)``
and ``close()``; a side also preloads messages (untimed) and counts what was archived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

QUEUE = "bench"
"""The one queue every scenario uses (pgqrs queue name, pgmq queue, PgQueuer entrypoint)."""

Payload = dict[str, Any]


def encode(payload: Payload) -> str:
    """Compact JSON, as pgqrs encodes it (minus pgqrs's validation walk)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


class Message(Protocol):
    """What a handler receives: a message id and its decoded JSON payload."""

    @property
    def id(self) -> int: ...

    @property
    def payload(self) -> Payload: ...


Handler = Callable[[Any], Awaitable[object]]


class ProducerLike(Protocol):
    """The producer API every side offers."""

    async def enqueue(self, payload: Payload) -> int: ...

    async def enqueue_batch(self, payloads: Sequence[Payload]) -> list[int]: ...

    async def close(self) -> None: ...


class ConsumerLike(Protocol):
    """The consumer API every side offers."""

    async def dequeue(self, limit: int = 1) -> Sequence[Message]: ...

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]: ...

    async def consume(self, handler: Handler, *, batch_size: int, concurrency: int,
                      poll_interval: float, stop: asyncio.Event | None,
                      stop_when_idle: bool) -> int: ...

    async def close(self) -> None: ...


class Side(Protocol):
    """A way to build producers and consumers on a database."""

    name: str
    wake_up: str
    """How an idle consumer learns about new messages (shown with the latency row)."""

    async def producer(self, dsn: str, index: int = 0) -> ProducerLike: ...

    async def consumer(self, dsn: str, index: int = 0, *, listen: bool = False,
                       poll_interval: float = 1.0) -> ConsumerLike: ...

    async def prepare(self, dsn: str, *, latency: bool) -> None:
        """Get a fresh database ready for one run (``latency``: the latency scenario)."""
        ...

    async def preload(self, dsn: str, payloads: Sequence[Payload]) -> None:
        """Make ``payloads`` visible messages and ANALYZE (untimed, before a drain)."""
        ...

    async def archived(self, dsn: str) -> int:
        """How many messages were acknowledged (a correctness check after a run)."""
        ...


class LoopConsumer:
    """The plain worker loop of the hand-written clients: claim a batch, run the handler
    on each message in turn, acknowledge the batch.

    Subclasses provide ``dequeue`` and ``archive_batch``, and call ``wake()`` when a
    notification arrives (``listening``). Used by both floors and, for want of a worker
    loop of its own, by the pgmq peer.
    """

    listening = False

    def __init__(self) -> None:
        self._wake = asyncio.Event()

    def wake(self, *_: object) -> None:
        """Notification callback: an idle loop claims again now."""
        self._wake.set()

    async def dequeue(self, limit: int = 1) -> Sequence[Message]:
        raise NotImplementedError

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]:
        raise NotImplementedError

    async def archive_and_dequeue(self, message_ids: Sequence[int],
                                  limit: int) -> Sequence[Message]:
        """Acknowledge a handled batch and claim the next: two statements here; a client
        with a fused statement (the same-SQL floor) overrides it with one."""
        await self.archive_batch(message_ids)
        return await self.dequeue(limit)

    async def consume(self, handler: Handler, *, batch_size: int, concurrency: int = 1,
                      poll_interval: float = 1.0, stop: asyncio.Event | None = None,
                      stop_when_idle: bool = False) -> int:
        """Claim, handle in turn, acknowledge; return how many messages were handled.

        Idle: with LISTEN, sleep until a notification (0.1 s cap, to notice ``stop``);
        otherwise sleep ``poll_interval``. ``concurrency`` is ignored (handlers run in
        turn, which is the cheapest way to run a no-op handler).
        """
        handled = 0
        done: list[int] = []
        while stop is None or not stop.is_set():
            self._wake.clear()
            batch = (await self.archive_and_dequeue(done, batch_size) if done
                     else await self.dequeue(batch_size))
            done = []
            if not batch:
                if stop_when_idle:
                    break
                timeout = 0.1 if self.listening else poll_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            for message in batch:
                await handler(message)
            done = [m.id for m in batch]
            handled += len(batch)
        if done:  # stopped with a handled batch not yet acknowledged
            await self.archive_batch(done)
        return handled
