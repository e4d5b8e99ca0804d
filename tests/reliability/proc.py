"""Producer and consumer processes for the reliability tests.

Run as ``python proc.py '<json config>'``. Every process appends one JSON line per event
to ``config["out"]`` with a single ``write(2)`` on an ``O_APPEND`` descriptor, so what was
recorded survives a SIGKILL. Modes:

* ``produce``: enqueue ``count`` messages in batches of random size; one ``batch`` line
  per committed batch (its ids and sequence numbers).
* ``consume``: ``Consumer.consume`` with a random batch size and concurrency until SIGTERM
  (dead-letter threshold and retry backoff: the queue's policy).
* ``manual``: a ``dequeue``/``archive_batch``/``release`` loop with random limits until
  SIGTERM, dead-lettering and backing off by the queue's policy (``Consumer.policy()``).
* ``crashy``: a consumer loop that SIGKILLs itself at ``crash_point`` (``after_dequeue``,
  ``in_handler``, ``in_archive``) with probability ``crash_p`` per opportunity, or (no
  point) ``consume()`` for the test to SIGKILL from outside.
* ``fused``: an ``archive_and_dequeue`` loop (each call archives the previous batch and
  claims the next) that SIGKILLs itself at a random instant of that round trip with
  probability ``crash_p`` per call.
* ``blocked_archive``: claim ``limit`` messages, print ``ARCHIVING`` and archive them (the
  test holds a lock that blocks the statement and kills the process meanwhile).

Consumers record a ``d`` line per delivery with the server's lease window (``s`` =
``dequeued_at``, ``v`` = ``vt``) and ``e``, the client clock when the handler finished
(before any release or ack), and ``o``: ``ok`` or ``fail``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from typing import Any

from pgqrs import Consumer, Producer, QueueMessage


class Recorder:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, **record: Any) -> None:
        os.write(self.fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _delivery(rec: Recorder, worker: int, message: QueueMessage, outcome: str) -> None:
    assert message.dequeued_at is not None and message.vt is not None
    rec.write(k="d", m=message.id, w=worker, r=message.read_ct,
              s=message.dequeued_at.timestamp(), v=message.vt.timestamp(), e=time.time(),
              o=outcome, p=message.payload.get("n"))


def _should_fail(rng: random.Random, message: QueueMessage, fail_p: float) -> bool:
    return bool(message.payload.get("poison")) or rng.random() < fail_p


async def produce(cfg: dict[str, Any], rec: Recorder) -> None:
    rng = random.Random(cfg["seed"])
    base, count, poison_every = cfg["base"], cfg["count"], cfg.get("poison_every", 0)
    async with Producer(cfg["dsn"], cfg["queue"], cfg["host"], cfg["port"]) as producer:
        n = 0
        while n < count:
            size = min(rng.randint(1, cfg.get("max_batch", 500)), count - n)
            seqs = list(range(base + n, base + n + size))
            payloads = [{"n": s, "poison": bool(poison_every and s % poison_every == 0),
                         "pad": "x" * rng.randint(0, 64)} for s in seqs]
            ids = await producer.enqueue_batch(payloads)
            rec.write(k="batch", ids=ids, seqs=seqs)
            n += size
    print(f"DONE {n}", flush=True)


async def consume(cfg: dict[str, Any], rec: Recorder) -> None:
    rng = random.Random(cfg["seed"])
    fail_p = cfg.get("fail_p", 0.0)
    stop = _stop_event()
    async with Consumer(cfg["dsn"], cfg["queue"], cfg["host"], cfg["port"],
                        visibility_timeout=cfg.get("vt", 30),
                        heartbeat_interval=cfg.get("heartbeat", 1.0)) as consumer:
        worker = await consumer.register()

        async def handler(message: QueueMessage) -> None:
            if rng.random() < 0.2:
                await asyncio.sleep(rng.random() * 0.002)
            if _should_fail(rng, message, fail_p):
                _delivery(rec, worker, message, "fail")
                raise RuntimeError("injected handler failure")
            _delivery(rec, worker, message, "ok")

        print("READY", flush=True)
        batch = rng.randint(1, cfg.get("max_batch", 50))
        done = await consumer.consume(handler, batch_size=batch,
                                      concurrency=rng.randint(batch, 2 * batch),
                                      poll_interval=0.05, stop=stop, grace_period=10)
    print(f"DONE {done}", flush=True)


async def manual(cfg: dict[str, Any], rec: Recorder) -> None:
    rng = random.Random(cfg["seed"])
    fail_p = cfg.get("fail_p", 0.0)
    stop = _stop_event()
    done = 0
    async with Consumer(cfg["dsn"], cfg["queue"], cfg["host"], cfg["port"],
                        visibility_timeout=cfg.get("vt", 30),
                        heartbeat_interval=cfg.get("heartbeat", 1.0)) as consumer:
        worker = await consumer.register()
        policy = await consumer.policy()  # the queue's rules, as a hand-written loop reads them
        print("READY", flush=True)
        while not stop.is_set():
            batch = await consumer.dequeue(rng.randint(1, cfg.get("max_batch", 50)))
            if not batch:
                await asyncio.sleep(0.05)
                continue
            ok: list[int] = []
            for message in batch:
                if _should_fail(rng, message, fail_p):
                    _delivery(rec, worker, message, "fail")
                    if policy.is_dead(message.read_ct):
                        assert await consumer.archive_dead([message.id]) == [True]
                    else:
                        delay = policy.retry_delay(message.read_ct)
                        assert await consumer.release([message.id], delay=delay) == 1
                else:
                    _delivery(rec, worker, message, "ok")
                    ok.append(message.id)
            if ok:
                result = await consumer.archive_batch(ok)
                assert all(result), f"lost the lease of {ok} ({result})"
                done += len(ok)
    print(f"DONE {done}", flush=True)


async def crashy(cfg: dict[str, Any], rec: Recorder) -> None:
    """With a ``crash_point``: a dequeue/handle/archive_batch loop on the public API that
    SIGKILLs itself there with probability ``crash_p``. Without one: ``consume()`` (the test
    SIGKILLs it from outside at a random time)."""
    rng = random.Random(cfg["seed"])
    point, crash_p = cfg["crash_point"], cfg["crash_p"]
    stop = _stop_event()

    def maybe_crash(here: str) -> None:
        if here == point and rng.random() < crash_p:
            rec.write(k="crash", point=here, t=time.time())
            os.kill(os.getpid(), signal.SIGKILL)

    async with Consumer(cfg["dsn"], cfg["queue"], cfg["host"], cfg["port"],
                        visibility_timeout=cfg["vt"], heartbeat_interval=0.5) as consumer:
        worker = await consumer.register()

        async def handler(message: QueueMessage) -> None:
            _delivery(rec, worker, message, "start")
            await asyncio.sleep(rng.random() * 0.005)
            maybe_crash("in_handler")
            _delivery(rec, worker, message, "ok")

        print("READY", flush=True)
        if not point:
            batch = rng.randint(1, 20)
            await consumer.consume(handler, batch_size=batch, concurrency=batch,
                                   poll_interval=0.05, stop=stop)
            print("DONE", flush=True)
            return
        while not stop.is_set():
            batch = await consumer.dequeue(rng.randint(1, 20))
            if not batch:
                await asyncio.sleep(0.05)
                continue
            maybe_crash("after_dequeue")
            for message in batch:
                await handler(message)
            ids = [m.id for m in batch]
            if point == "in_archive" and rng.random() < crash_p:
                # Die at a random instant of the archive round trip: before it is sent,
                # while the statement runs, or after the commit but before the answer.
                delay = rng.random() * 0.004
                rec.write(k="crash", point="in_archive", t=time.time(), delay=delay)
                asyncio.get_running_loop().call_later(delay, os.kill, os.getpid(),
                                                      signal.SIGKILL)
            assert await consumer.archive_batch(ids) == [True] * len(ids)
    print("DONE", flush=True)


async def fused(cfg: dict[str, Any], rec: Recorder) -> None:
    """Archive the previous batch and claim the next in one call, until SIGTERM; with
    probability ``crash_p`` per call, SIGKILL ourselves while it is on its way."""
    rng = random.Random(cfg["seed"])
    stop = _stop_event()
    async with Consumer(cfg["dsn"], cfg["queue"], cfg["host"], cfg["port"],
                        visibility_timeout=cfg["vt"], heartbeat_interval=0.5) as consumer:
        worker = await consumer.register()
        print("READY", flush=True)
        done: list[QueueMessage] = []
        while not stop.is_set():
            if done and rng.random() < cfg["crash_p"]:
                # Before it is sent, while the statement runs, or after the commit but
                # before the answer.
                delay = rng.random() * 0.004
                rec.write(k="crash", point="in_fused", t=time.time(), delay=delay)
                asyncio.get_running_loop().call_later(delay, os.kill, os.getpid(),
                                                      signal.SIGKILL)
            acked, batch = await consumer.archive_and_dequeue(done, rng.randint(1, 20))
            assert acked == [True] * len(done), f"lost the lease of {done} ({acked})"
            done = batch
            if not batch:
                await asyncio.sleep(0.05)
            for message in batch:
                _delivery(rec, worker, message, "start")
                await asyncio.sleep(rng.random() * 0.002)
                _delivery(rec, worker, message, "ok")
        await consumer.archive_batch(done)
    print("DONE", flush=True)


async def blocked_archive(cfg: dict[str, Any], rec: Recorder) -> None:
    """Claim some messages, then archive them (the test blocks that archive and kills us)."""
    consumer = Consumer(cfg["dsn"], cfg["queue"], cfg["host"], cfg["port"],
                        visibility_timeout=cfg["vt"], heartbeat_interval=0.5)
    held = await consumer.dequeue(cfg["limit"])
    rec.write(k="held", ids=[m.id for m in held], worker=consumer.worker_id)
    print("ARCHIVING", flush=True)
    await consumer.archive_batch([m.id for m in held])
    print("ARCHIVED", flush=True)
    await consumer.close()


MODES = {"produce": produce, "consume": consume, "manual": manual, "crashy": crashy,
         "fused": fused, "blocked_archive": blocked_archive}


def main(argv: list[str]) -> None:
    cfg = json.loads(argv[1])
    rec = Recorder(cfg["out"])
    asyncio.run(MODES[cfg["mode"]](cfg, rec))


if __name__ == "__main__":
    main(sys.argv)
