"""Scenario 2: consumers SIGKILLed at random points lose nothing and archive exactly once.

Consumer processes kill themselves with SIGKILL right after a dequeue, in the middle of a
handler, or at a random instant of an archive round trip (or of a fused archive-and-claim
round trip); others are SIGKILLed by the test at random times. Their leases run out and
the messages come back; at the end every message is archived exactly once and no
redelivery started before the previous lease ended.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from pgqrs import Admin, Consumer, Producer

from .support import Procs, read_records, scalar, sql

LEASE = 1.0
MESSAGES = 3000
POINTS = ("after_dequeue", "in_handler", "in_archive")
CRASH_P = {"after_dequeue": 0.15, "in_handler": 0.01, "in_archive": 0.25}
PER_POINT = 6
PARENT_KILLS = 6
BLOCKED_LEASE = 3.0


@pytest.mark.timeout(180)
async def test_sigkill_at_random_points_loses_nothing(dsn: str, queue: str, admin: Admin,
                                                      procs: Procs) -> None:
    # Crashes redeliver some messages many times: no dead letters here (the queue's rule).
    await admin.update_queue(queue, max_read_ct=10_000)
    rng = random.Random(7)
    producer = Producer(dsn, queue, "p", 1)
    produced: list[int] = []

    async def top_up() -> None:
        # Keep work available so that every planned crash gets its chance.
        if await scalar(dsn, "SELECT count(*) FROM pgqrs_messages") < 300:
            start = len(produced)
            produced.extend(await producer.enqueue_batch(
                [{"n": n} for n in range(start, start + 500)]))

    for _ in range(MESSAGES // 500):
        start = len(produced)
        produced.extend(await producer.enqueue_batch([{"n": n}
                                                      for n in range(start, start + 500)]))
    try:
        await crash_rounds(dsn, queue, procs, rng, top_up, produced)
    finally:
        await producer.close()


async def crash_rounds(dsn: str, queue: str, procs: Procs, rng: random.Random,
                       top_up: Callable[[], Awaitable[None]], produced: list[int]) -> None:
    began = time.monotonic()
    plan = [p for p in POINTS for _ in range(PER_POINT)] + ["parent"] * PARENT_KILLS
    rng.shuffle(plan)
    outputs = []
    crashes: Counter[str] = Counter()
    port = 1000
    running: list[tuple[subprocess.Popen[bytes], str, float]] = []
    deadline = time.monotonic() + 120
    while plan or running:
        assert time.monotonic() < deadline, "crash rounds took too long"
        while plan and len(running) < 3:
            point = plan.pop()
            port += 1
            proc, out = procs.spawn(mode="crashy", dsn=dsn, queue=queue, host="crashy",
                                    port=port, seed=port, vt=LEASE,
                                    crash_point=point if point != "parent" else "",
                                    crash_p=CRASH_P.get(point, 0.0))
            outputs.append(out)
            kill_at = time.monotonic() + rng.uniform(0.3, 1.2) if point == "parent" else 1e18
            running.append((proc, point, kill_at))
        await asyncio.sleep(0.02)
        await top_up()
        for item in list(running):
            proc, point, kill_at = item
            if point == "parent" and time.monotonic() >= kill_at and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            if proc.poll() is not None:
                running.remove(item)
                assert proc.returncode == -signal.SIGKILL, procs.log_of(proc)
                crashes[point] += 1
    # A well-behaved consumer finishes what the crashed ones left behind.
    proc, out = procs.spawn(mode="crashy", dsn=dsn, queue=queue, host="finisher", port=9999,
                            seed=1, vt=LEASE, crash_point="", crash_p=0.0)
    outputs.append(out)
    await procs.wait_line(proc, "READY")
    while await scalar(dsn, "SELECT count(*) FROM pgqrs_messages"):
        assert time.monotonic() < deadline + 30, "the finisher did not drain the queue"
        assert proc.poll() is None, procs.log_of(proc)
        await asyncio.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    assert await procs.wait(proc) == 0, procs.log_of(proc)
    elapsed = time.monotonic() - began

    records = [r for out in outputs for r in read_records(out)]
    self_kills = Counter(r["point"] for r in records if r["k"] == "crash")
    archive = await sql(dsn, "SELECT original_msg_id, (payload->>'n')::int AS n "
                             "FROM pgqrs_archive")
    counts = Counter(r["original_msg_id"] for r in archive)
    assert len(archive) == len(produced) and set(counts) == set(produced), "lost or duplicated"
    assert sorted(r["n"] for r in archive) == list(range(len(produced)))
    assert await scalar(dsn, "SELECT count(*) FROM pgqrs_messages") == 0

    starts = [r for r in records if r["k"] == "d" and r["o"] == "start"]
    by_message: dict[int, list[dict[str, float]]] = {}
    for d in starts:
        by_message.setdefault(d["m"], []).append(d)
    early = []
    for ds in by_message.values():
        ds.sort(key=lambda d: d["s"])
        for prev, nxt in itertools.pairwise(ds):
            if nxt["s"] < prev["v"] - 0.001 or nxt["r"] <= prev["r"]:
                early.append((prev, nxt))
    assert not early, f"redelivered before the lease ended: {early[:3]}"
    redelivered = sum(1 for ds in by_message.values() if len(ds) > 1)
    ok = Counter(r["m"] for r in records if r["k"] == "d" and r["o"] == "ok")
    for point in POINTS:
        assert self_kills[point] >= 1, f"no crash {point}: {self_kills}"
    assert crashes["parent"] == PARENT_KILLS
    assert sum(crashes.values()) == len(POINTS) * PER_POINT + PARENT_KILLS
    assert redelivered > 0
    print(f"\ncrashes: messages={len(produced)} processes={len(outputs)} "
          f"self_kills={dict(self_kills)} parent_kills={crashes['parent']} "
          f"redelivered={redelivered} handled_twice={sum(c > 1 for c in ok.values())} "
          f"lost=0 archived_twice=0 seconds={elapsed:.1f}")


@pytest.mark.timeout(60)
async def test_sigkill_while_archive_statement_runs(dsn: str, queue: str,
                                                    procs: Procs) -> None:
    """Kill the consumer while its archive statement is blocked inside the server."""
    async with Producer(dsn, queue, "p", 1) as producer:
        ids = await producer.enqueue_batch([{"n": n} for n in range(10)])
    lock = await asyncpg.connect(dsn)
    try:
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE pgqrs_archive IN EXCLUSIVE MODE")
        proc, out = procs.spawn(mode="blocked_archive", dsn=dsn, queue=queue, host="victim",
                                port=77, vt=BLOCKED_LEASE, limit=10)
        await procs.wait_line(proc, "ARCHIVING")
        waiting = []
        for _ in range(200):
            waiting = await sql(dsn, "SELECT pid FROM pg_stat_activity WHERE datname = "
                                     "current_database() AND wait_event_type = 'Lock' AND "
                                     "query LIKE '%pgqrs_archive%'")
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting, "the archive statement never blocked"
        os.kill(proc.pid, signal.SIGKILL)
        assert await procs.wait(proc) == -signal.SIGKILL
        await asyncio.sleep(0.1)
        await tx.commit()  # the orphaned statement now runs, then finds its client gone
    finally:
        await lock.close()
    for _ in range(100):
        if not await sql(dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = $1", waiting[0][0]):
            break
        await asyncio.sleep(0.05)
    (held,) = [r for r in read_records(out) if r["k"] == "held"]
    assert sorted(held["ids"]) == sorted(ids)
    assert await scalar(dsn, "SELECT count(*) FROM pgqrs_archive") == 0
    rows = await sql(dsn, "SELECT consumer_worker_id, read_ct FROM pgqrs_messages")
    assert len(rows) == 10 and {(r[0], r[1]) for r in rows} == {(held["worker"], 1)}
    async with Consumer(dsn, queue, "rescuer", 78, visibility_timeout=5) as rescuer:
        assert await rescuer.dequeue(10) == []  # the dead consumer's lease still runs
        await asyncio.sleep(BLOCKED_LEASE)
        again = await rescuer.dequeue(10)
        assert sorted(m.id for m in again) == sorted(ids)
        assert {m.read_ct for m in again} == {2}
        assert await rescuer.archive_batch([m.id for m in again]) == [True] * 10
    archived = await sql(dsn, "SELECT original_msg_id FROM pgqrs_archive")
    assert sorted(r[0] for r in archived) == sorted(ids)


@pytest.mark.timeout(120)
async def test_sigkill_during_fused_ack_and_claim_loses_nothing(
        dsn: str, queue: str, admin: Admin, procs: Procs) -> None:
    """``archive_and_dequeue`` loops killed in the middle of their round trip, and
    ``consume()`` loops (which send their acks with their claims) killed from outside:
    afterwards every message is archived exactly once, from the server's own rows."""
    await admin.update_queue(queue, max_read_ct=10_000)
    rng = random.Random(11)
    async with Producer(dsn, queue, "p", 1) as producer:
        produced = await producer.enqueue_batch([{"n": n} for n in range(1500)])
    plan = ["fused"] * 8 + ["parent"] * 4
    rng.shuffle(plan)
    outputs, running, port = [], [], 2000
    deadline = time.monotonic() + 90
    while plan or running:
        assert time.monotonic() < deadline, "crash rounds took too long"
        while plan and len(running) < 3:
            kind, port = plan.pop(), port + 1
            mode = "fused" if kind == "fused" else "crashy"
            proc, out = procs.spawn(mode=mode, dsn=dsn, queue=queue, host="k", port=port,
                                    seed=port, vt=LEASE, crash_point="", crash_p=0.3)
            outputs.append(out)
            kill_at = time.monotonic() + rng.uniform(0.3, 1.0) if kind == "parent" else 1e18
            running.append((proc, kill_at))
        await asyncio.sleep(0.02)
        for item in list(running):
            proc, kill_at = item
            if time.monotonic() >= kill_at and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            if proc.poll() is not None:
                running.remove(item)
                assert proc.returncode == -signal.SIGKILL, procs.log_of(proc)
        if not await scalar(dsn, "SELECT count(*) FROM pgqrs_messages"):
            for proc, _ in running:  # drained early: stop the rest
                os.kill(proc.pid, signal.SIGKILL)
    # A well-behaved fused loop finishes what the killed ones left behind.
    proc, out = procs.spawn(mode="fused", dsn=dsn, queue=queue, host="finisher", port=9999,
                            seed=1, vt=LEASE, crash_p=0.0)
    outputs.append(out)
    await procs.wait_line(proc, "READY")
    while await scalar(dsn, "SELECT count(*) FROM pgqrs_messages"):
        assert time.monotonic() < deadline + 30, "the finisher did not drain the queue"
        assert proc.poll() is None, procs.log_of(proc)
        await asyncio.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    assert await procs.wait(proc) == 0, procs.log_of(proc)

    archive = await sql(dsn, "SELECT original_msg_id, (payload->>'n')::int AS n "
                             "FROM pgqrs_archive")
    counts = Counter(r["original_msg_id"] for r in archive)
    assert len(archive) == len(produced) and set(counts) == set(produced), "lost or duplicated"
    assert sorted(r["n"] for r in archive) == list(range(len(produced)))
    records = [r for out in outputs for r in read_records(out)]
    assert sum(1 for r in records if r["k"] == "crash") >= 3, "too few kills mid round trip"
    starts: dict[int, list[dict[str, float]]] = {}
    for d in records:
        if d["k"] == "d" and d["o"] == "start":
            starts.setdefault(d["m"], []).append(d)
    early = [(a, b) for ds in starts.values()
             for a, b in itertools.pairwise(sorted(ds, key=lambda d: d["s"]))
             if b["s"] < a["v"] - 0.001 or b["r"] <= a["r"]]
    assert not early, f"redelivered before the lease ended: {early[:3]}"
    assert any(len(ds) > 1 for ds in starts.values()), "no message was delivered again"
    print(f"\nfused crashes: messages={len(produced)} processes={len(outputs)} "
          f"self_kills={sum(1 for r in records if r['k'] == 'crash')} "
          f"redelivered={sum(1 for ds in starts.values() if len(ds) > 1)} "
          f"lost=0 archived_twice=0")
