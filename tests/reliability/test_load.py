"""Scenario 1: 8 consumer processes and 2 producer processes under random failures.

Half of the consumers run ``Consumer.consume`` (random batch size and concurrency), half a
hand-written ``dequeue``/``archive_batch``/``release`` loop with random limits; producers
use ``enqueue_batch`` with random sizes. About 1% of the messages are poison (they always
fail, so they end as dead letters) and every other delivery fails with probability 5%.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from typing import Any

import pytest

from pgqrs import Admin

from .support import Procs, lease_overlaps, read_records, scalar, sql

CONSUMERS = 8
PRODUCERS = 2
MAX_READ_CT = 3
FAIL_P = 0.05
POISON_EVERY = 97


async def run_load(dsn: str, procs: Procs, messages: int, seed: int) -> dict[str, Any]:
    async with Admin(dsn) as admin:  # the queue's rules, followed by both kinds of consumer
        await admin.create_queue("load", max_read_ct=MAX_READ_CT, retry_backoff_base=0.02,
                                 retry_backoff_max=0.2)
    began = time.monotonic()
    consumers = []
    for i in range(CONSUMERS):
        proc, out = procs.spawn(mode="consume" if i % 2 == 0 else "manual", dsn=dsn,
                                queue="load", host="load-consumer", port=100 + i,
                                seed=seed * 100 + i, fail_p=FAIL_P,
                                max_batch=64)
        consumers.append((proc, out))
    for proc, _ in consumers:
        await procs.wait_line(proc, "READY")
    producers = []
    per = messages // PRODUCERS
    for i in range(PRODUCERS):
        count = per if i < PRODUCERS - 1 else messages - per * (PRODUCERS - 1)
        producers.append(procs.spawn(mode="produce", dsn=dsn, queue="load",
                                     host="load-producer", port=200 + i, seed=seed * 7 + i,
                                     base=i * per, count=count, poison_every=POISON_EVERY,
                                     max_batch=500))
    for proc, _ in producers:
        assert await procs.wait(proc, timeout=600) == 0, procs.log_of(proc)
    produced_at = time.monotonic()
    deadline = time.monotonic() + 600
    while await scalar(dsn, "SELECT count(*) FROM pgqrs_messages"):
        assert time.monotonic() < deadline, "the consumers did not drain the queue"
        dead = [p for p, _ in consumers if p.poll() is not None]
        assert not dead, procs.log_of(dead[0])
        await asyncio.sleep(0.2)
    drained_at = time.monotonic()
    for proc, _ in consumers:
        os.kill(proc.pid, signal.SIGTERM)
    for proc, _ in consumers:
        assert await procs.wait(proc, timeout=60) == 0, procs.log_of(proc)

    # -- what the producers committed
    produced: dict[int, int] = {}
    for _, out in producers:
        for rec in read_records(out):
            assert len(rec["ids"]) == len(rec["seqs"])
            for mid, seq in zip(rec["ids"], rec["seqs"], strict=True):
                assert mid not in produced
                produced[mid] = seq
    assert len(produced) == messages
    assert sorted(produced.values()) == list(range(messages))

    # -- where every message ended
    archive = await sql(dsn, "SELECT original_msg_id, dead_letter, read_ct, "
                             "(payload->>'n')::int AS n, (payload->>'poison')::bool AS poison "
                             "FROM pgqrs_archive")
    archived = Counter(r["original_msg_id"] for r in archive)
    duplicated_archive = {m: c for m, c in archived.items() if c > 1}
    assert not duplicated_archive, f"archived more than once: {list(duplicated_archive)[:10]}"
    assert set(archived) == set(produced), (
        f"lost: {sorted(set(produced) - set(archived))[:10]}, "
        f"unknown: {sorted(set(archived) - set(produced))[:10]}")
    assert all(r["n"] == produced[r["original_msg_id"]] for r in archive), "payload mixed up"
    live = await scalar(dsn, "SELECT count(*) FROM pgqrs_messages")
    assert live == 0
    statuses = await sql(dsn, "SELECT status::text AS s, count(*) AS c FROM pgqrs_workers "
                              "GROUP BY 1")
    assert {r["s"]: r["c"] for r in statuses} == {"stopped": CONSUMERS + PRODUCERS}

    # -- every delivery, with its lease window
    deliveries = [r for _, out in consumers for r in read_records(out) if r["k"] == "d"]
    by_message: dict[int, list[dict[str, Any]]] = {}
    for d in deliveries:
        by_message.setdefault(d["m"], []).append(d)
    assert set(by_message) == set(produced)
    overlaps = lease_overlaps(deliveries)
    assert not overlaps, f"overlapping leases: {overlaps[:3]}"
    # pgqrs logs through logging's last-resort handler here: message text only.
    expected = ("failed (attempt", "dead-lettered", "injected handler failure")
    warnings = [line for proc, _ in consumers for line in procs.log_of(proc, 10**6).splitlines()
                if "pgqrs" in line and not any(e in line for e in expected)]
    duplicated = [m for m, ds in by_message.items() if sum(d["o"] == "ok" for d in ds) > 1]
    assert not duplicated, (
        f"handled successfully more than once: {duplicated[:10]}; deliveries of the first: "
        f"{by_message[duplicated[0]]}; consumer warnings: {warnings[:10]}")
    dead_rows = {r["original_msg_id"]: r for r in archive if r["dead_letter"]}
    for mid, ds in by_message.items():
        ds.sort(key=lambda d: d["r"])
        assert [d["r"] for d in ds] == list(range(1, len(ds) + 1)), (mid, ds)
        if ds[-1]["o"] == "ok":
            assert mid not in dead_rows, (mid, ds)
            assert all(d["o"] == "fail" for d in ds[:-1])
        else:
            assert mid in dead_rows and len(ds) == MAX_READ_CT, (mid, ds)
            assert all(d["o"] == "fail" for d in ds)
    poison = {r["original_msg_id"] for r in archive if r["poison"]}
    assert poison <= set(dead_rows)
    fails = sum(d["o"] == "fail" for d in deliveries)
    return {
        "messages": messages, "consumers": CONSUMERS, "producers": PRODUCERS,
        "deliveries": len(deliveries), "failures_injected": fails,
        "dead_letters": len(dead_rows), "poison": len(poison),
        "archived_ok": len(archive) - len(dead_rows), "lost": 0, "duplicated": 0,
        "overlapping_leases": 0, "unexpected_warnings": len(warnings),
        "produce_seconds": round(produced_at - began, 1),
        "total_seconds": round(drained_at - began, 1),
    }


@pytest.mark.timeout(420)
async def test_load_8_consumers_2_producers(dsn: str, procs: Procs) -> None:
    """100,000 messages by default (about 45 s on 2 cores); PGQRS_LOAD_MESSAGES overrides."""
    messages = int(os.environ.get("PGQRS_LOAD_MESSAGES", 100_000))
    stats = await run_load(dsn, procs, messages=messages, seed=1)
    print(f"\nload: {stats}")


@pytest.mark.timeout(30)
def test_lease_overlap_check_catches_overlaps() -> None:
    """The checker itself: a second claim inside the first lease is reported."""
    first = {"m": 1, "r": 1, "s": 100.0, "v": 130.0, "e": 100.1, "o": "ok"}
    assert lease_overlaps([first, {**first, "r": 2, "s": 129.0}])
    assert not lease_overlaps([first, {**first, "r": 2, "s": 130.0}])
    failed = {**first, "o": "fail", "e": 100.5}
    assert not lease_overlaps([failed, {**first, "r": 2, "s": 100.6}])
    assert lease_overlaps([failed, {**first, "r": 2, "s": 100.2}])
    assert lease_overlaps([first, {**first, "r": 1, "s": 140.0}])  # read_ct must grow
