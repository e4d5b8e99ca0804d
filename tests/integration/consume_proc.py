"""A worker process for the signal tests of consume() (run: python consume_proc.py MODE ...).

Modes:
    plain  ``await consumer.consume(handler)`` with nothing about signals, as a new user
           writes it; handlers hang, so a stop has to release them.
    host   the process installs its own SIGTERM handler first (as uvicorn or a job runner
           would); consume() must leave it in place.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections import Counter

from pgqrs import Consumer, QueueMessage, Settled


async def plain(dsn: str, queue: str, port: int) -> None:
    started: set[int] = set()
    outcomes: Counter[str] = Counter()

    async def handler(message: QueueMessage) -> None:
        started.add(message.id)
        if len(started) == 10:
            print("HOLDING 10", flush=True)
        await asyncio.sleep(3600)

    async with Consumer(dsn, queue, "plain", port, visibility_timeout=600) as consumer:
        done = await consumer.consume(handler, grace_period=1,
                                      on_settled=lambda e: outcomes.update([str(e.outcome)]))
    print(f"DONE {done} {dict(outcomes)}", flush=True)


async def host(dsn: str, queue: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    calls: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        calls.append(signum)
        loop.call_soon_threadsafe(stop.set)

    signal.signal(signal.SIGTERM, on_sigterm)

    async def handler(message: QueueMessage) -> None:
        await asyncio.sleep(0.01)

    def settled(event: Settled) -> None:
        if event.message.payload["i"] == 0:
            print(f"READY {signal.getsignal(signal.SIGTERM) is on_sigterm}", flush=True)

    async with Consumer(dsn, queue, "host", port) as consumer:
        done = await consumer.consume(handler, stop=stop, on_settled=settled)
    print(f"DONE {done} host_handler_calls={len(calls)} "
          f"kept={signal.getsignal(signal.SIGTERM) is on_sigterm}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="LOG %(message)s")
    mode, dsn, queue, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    asyncio.run({"plain": plain, "host": host}[mode](dsn, queue, port))
