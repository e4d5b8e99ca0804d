"""Processes for tests/reliability/test_maintenance.py.

``python maintenance_proc.py drain DSN QUEUE PORT OUT DONE``: claim 20 / archive in a
loop, timing every call, until the file DONE exists; then write a JSON summary to OUT.

``python maintenance_proc.py consume DSN QUEUE PORT INTERVAL``: ``Consumer.consume`` with
``maintenance=INTERVAL`` until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from pgqrs import Consumer, QueueMessage


async def drain(dsn: str, queue: str, port: int, out: str, done: str) -> None:
    calls: list[tuple[float, float, str]] = []
    archived = 0
    async with Consumer(dsn, queue, "drain", port, visibility_timeout=60) as consumer:
        while not os.path.exists(done):
            start = time.time()
            messages = await consumer.dequeue(20)
            calls.append((start, time.time() - start, "dequeue"))
            if not messages:
                await asyncio.sleep(0.01)
                continue
            await asyncio.sleep(0.002)  # the "work"
            start = time.time()
            ok = await consumer.archive_batch([m.id for m in messages])
            calls.append((start, time.time() - start, "archive"))
            archived += sum(ok)
    with open(out, "w") as f:
        json.dump({"calls": calls, "archived": archived}, f)


async def consume(dsn: str, queue: str, port: int, interval: float) -> None:
    async def handle(message: QueueMessage) -> None:
        return None

    async with Consumer(dsn, queue, "consume", port) as consumer:
        await consumer.consume(handle, maintenance=interval, handle_signals=True)


if __name__ == "__main__":
    mode, dsn, queue, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "drain":
        asyncio.run(drain(dsn, queue, port, sys.argv[5], sys.argv[6]))
    else:
        asyncio.run(consume(dsn, queue, port, float(sys.argv[5])))
