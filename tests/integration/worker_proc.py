"""A consumer process for the crash and signal tests (run: python worker_proc.py MODE ...)."""

from __future__ import annotations

import asyncio
import sys
import time

from pgqrs import Consumer, QueueMessage


async def hold(dsn: str, queue: str, port: int) -> None:
    """Claim 10 messages, say so, then hang until killed."""
    consumer = Consumer(dsn, queue, "crashy", port, visibility_timeout=60,
                        heartbeat_interval=0.2)
    held = await consumer.dequeue(10)
    print(f"HELD {len(held)}", flush=True)
    await asyncio.sleep(3600)


async def consume(dsn: str, queue: str, port: int) -> None:
    """Consume slowly until SIGTERM; print how many succeeded."""
    async def handler(message: QueueMessage) -> None:
        await asyncio.sleep(0.02)

    async with Consumer(dsn, queue, "graceful", port, heartbeat_interval=0.2) as consumer:
        print("READY", flush=True)
        done = await consumer.consume(handler, batch_size=5, concurrency=5, poll_interval=0.1,
                                      handle_signals=True, grace_period=5)
    print(f"DONE {done} {time.time()}", flush=True)


if __name__ == "__main__":
    mode, dsn, queue, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    asyncio.run({"hold": hold, "consume": consume}[mode](dsn, queue, port))
