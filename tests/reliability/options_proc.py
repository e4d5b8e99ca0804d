"""Producer and consumer processes for the message-options tests (``test_message_options``).

Run as ``python options_proc.py '<json config>'``; records go to ``config["out"]`` as in
``proc.py`` (one ``write(2)`` per JSON line, so a SIGKILL never cuts one). Modes:

* ``keys``: enqueue every key of ``keys`` (shuffled by ``seed``) with ``dedup_key``: one at
  a time, in batches of ``NewMessage`` (with keys repeated inside the batch), or grouped
  (a group plus a key: the transactional path); one ``k`` line per key with the id got.
* ``groups``: enqueue ``per_group`` messages into each of ``groups`` groups, interleaved,
  in random batches; ``n`` is the message's place in its group. One ``batch`` line each.
* ``consume``: ``Consumer.consume`` until SIGTERM (or SIGKILL); ``d`` lines when a handler
  starts (``o`` = ``start``) and ends (``ok``), with the server's lease window (``s`` =
  ``dequeued_at``, ``v`` = ``vt``), the message's group and place, and ``e`` (client clock).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

from proc import Recorder, _stop_event

from pgqrs import Consumer, NewMessage, Producer, QueueMessage


async def keys(cfg: dict[str, Any], rec: Recorder) -> None:
    rng = random.Random(cfg["seed"])
    todo = list(cfg["keys"])
    rng.shuffle(todo)
    async with Producer(cfg["dsn"], cfg["queue"], cfg["host"], cfg["port"]) as producer:
        print("READY", flush=True)
        while todo:
            way = rng.choice(("one", "batch", "grouped"))
            if way == "one":
                key = todo.pop()
                got = [await producer.enqueue({"key": key, "p": cfg["port"]}, dedup_key=key)]
                taken = [key]
            elif way == "grouped":
                key = todo.pop()
                got = [await producer.enqueue({"key": key}, dedup_key=key,
                                              group=f"g{rng.randrange(3)}")]
                taken = [key]
            else:
                taken = [todo.pop() for _ in range(min(len(todo), rng.randint(1, 20)))]
                batch = taken + rng.sample(taken, k=min(2, len(taken)))  # repeats inside
                got = await producer.enqueue_batch(
                    [NewMessage({"key": k}, dedup_key=k) for k in batch])
                got, taken = got[:len(taken)], taken
            for key, mid in zip(taken, got, strict=True):
                rec.write(k="k", key=key, id=mid, way=way)
    print("DONE", flush=True)


async def groups(cfg: dict[str, Any], rec: Recorder) -> None:
    rng = random.Random(cfg["seed"])
    plan = [(g, n) for n in range(cfg["per_group"]) for g in range(cfg["groups"])]
    async with Producer(cfg["dsn"], cfg["queue"], cfg["host"], cfg["port"]) as producer:
        done = 0
        while done < len(plan):
            part = plan[done:done + rng.randint(1, 40)]
            ids = await producer.enqueue_batch(
                [NewMessage({"g": g, "n": n}, group=f"{cfg['prefix']}{g}") for g, n in part])
            rec.write(k="batch", ids=ids)
            done += len(part)
            await asyncio.sleep(rng.random() * 0.01)
    print(f"DONE {done}", flush=True)


async def consume(cfg: dict[str, Any], rec: Recorder) -> None:
    rng = random.Random(cfg["seed"])
    stop = _stop_event()
    async with Consumer(cfg["dsn"], cfg["queue"], cfg["host"], cfg["port"],
                        visibility_timeout=cfg["vt"], heartbeat_interval=0.5) as consumer:
        worker = await consumer.register()

        def record(message: QueueMessage, outcome: str) -> None:
            assert message.dequeued_at is not None and message.vt is not None
            rec.write(k="d", m=message.id, w=worker, r=message.read_ct, grp=message.group,
                      n=message.payload.get("n"), s=message.dequeued_at.timestamp(),
                      v=message.vt.timestamp(), e=time.time(), o=outcome)

        async def handler(message: QueueMessage) -> None:
            record(message, "start")  # before any work: a SIGKILL may come any moment
            await asyncio.sleep(rng.random() * cfg.get("work", 0.005))
            record(message, "ok")

        print("READY", flush=True)
        batch = rng.randint(1, 10)
        await consumer.consume(handler, batch_size=batch, concurrency=rng.randint(1, 2 * batch),
                               poll_interval=0.05, stop=stop, grace_period=5)
    print("DONE", flush=True)


MODES = {"keys": keys, "groups": groups, "consume": consume}


def main(argv: list[str]) -> None:
    import json

    cfg = json.loads(argv[1])
    asyncio.run(MODES[cfg["mode"]](cfg, Recorder(cfg["out"])))


if __name__ == "__main__":
    main(sys.argv)
