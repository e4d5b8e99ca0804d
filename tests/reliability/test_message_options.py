"""Message options under concurrency, across processes: dedup keys and ordered groups.

1. Producer processes racing on the same dedup keys (one at a time, in batches with keys
   repeated inside, and grouped, which takes the transactional path) end with exactly one
   message per key, and every producer got that message's id for it.
2. Consumer processes on a grouped queue, some SIGKILLed while they hold a group's head:
   sampled from the server while it runs, no group ever has two claimable or two leased
   messages; afterwards, from the archive's own timestamps, each group was delivered in
   order, one message at a time, and nothing was lost or archived twice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from pgqrs import Admin

from .support import read_records, scalar, sql

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "options_proc.py"
TOLERANCE = 0.001  # server timestamps are whole microseconds
CLAIM_LAG = 0.010
"""``dequeued_at`` is the claim's ``now()``: when its transaction *started*, which comes a
moment before the snapshot that saw the previous message archived. On a busy machine that
moment can reach milliseconds; two messages of a group leased at once would overlap by a
handler's run (tens of milliseconds here). The server-side sampling has no such slack."""


class Spawner:
    """``options_proc.py`` children, each writing records to a file of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn(self, **cfg: Any) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.directory / f"{cfg['mode']}-{len(self.running)}.jsonl"
        log = out.with_suffix(".log")
        cfg["out"] = str(out)
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, str(SCRIPT), json.dumps(cfg)],
                                    stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.running.append((proc, out))
        return proc, out

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        for p, out in self.running:
            if p is proc:
                return out.with_suffix(".log").read_text(errors="replace")[-3000:]
        return ""

    async def wait_line(self, proc: subprocess.Popen[bytes], text: str,
                        timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith(text) for line in self.log(proc).splitlines()):
            assert proc.poll() is None and time.monotonic() < deadline, self.log(proc)
            await asyncio.sleep(0.05)

    async def wait(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            assert time.monotonic() < deadline, self.log(proc)
            await asyncio.sleep(0.05)
        return proc.returncode

    def records(self) -> list[dict[str, Any]]:
        return [r for _, out in self.running for r in read_records(out)]

    def kill_all(self) -> None:
        for proc, _ in self.running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def spawner(tmp_path: Path) -> Any:
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        spawner.kill_all()


@pytest.mark.timeout(120)
async def test_racing_producers_make_one_message_per_key(dsn: str, spawner: Spawner) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("keys")
    keys = [f"key-{i}" for i in range(300)]
    producers = [spawner.spawn(mode="keys", dsn=dsn, queue="keys", host="kp", port=10 + i,
                               seed=i, keys=keys)[0] for i in range(4)]
    for proc in producers:
        assert await spawner.wait(proc) == 0, spawner.log(proc)

    rows = await sql(dsn, "SELECT id, dedup_key, group_key FROM pgqrs_messages")
    by_key = defaultdict(list)
    for row in rows:
        by_key[row["dedup_key"]].append(row["id"])
    assert sorted(by_key) == sorted(keys) and all(len(v) == 1 for v in by_key.values())
    got = defaultdict(set)
    ways = defaultdict(int)
    for record in spawner.records():
        got[record["key"]].add(record["id"])
        ways[record["way"]] += 1
    assert {k: v for k, v in got.items() if v != set(by_key[k])} == {}
    assert len(got) == len(keys) and min(ways.values()) > 50, ways
    # The grouped ones counted once in their groups, whoever won the race.
    counts = await sql(dsn, "SELECT group_key, live, (SELECT count(*) FROM pgqrs_messages m "
                            "WHERE m.group_key = g.group_key) AS actual, (SELECT count(*) "
                            "FROM pgqrs_messages m WHERE m.group_key = g.group_key AND NOT "
                            "m.parked) AS heads FROM pgqrs_groups g")
    assert counts and all(r["live"] == r["actual"] and r["heads"] == 1 for r in counts)
    print(f"\ndedup race: keys={len(keys)} producers={len(producers)} ways={dict(ways)} "
          f"messages={len(rows)}")


GROUPS_PER_PRODUCER = 20
PER_GROUP = 25
LEASE = 1.0


@pytest.mark.timeout(150)
async def test_killed_consumers_never_hold_two_messages_of_a_group(
        dsn: str, spawner: Spawner) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("groups")
    began = time.monotonic()
    producers = [spawner.spawn(mode="groups", dsn=dsn, queue="groups", host="gp", port=i,
                               seed=i, groups=GROUPS_PER_PRODUCER, per_group=PER_GROUP,
                               prefix=f"p{i}-")[0] for i in (1, 2)]
    expected = 2 * GROUPS_PER_PRODUCER * PER_GROUP
    port = itertools.count(100)

    def consumer(work: float = 0.05) -> subprocess.Popen[bytes]:
        n = next(port)
        return spawner.spawn(mode="consume", dsn=dsn, queue="groups", host="gc", port=n,
                             seed=n, vt=LEASE, work=work)[0]

    consumers = [consumer() for _ in range(5)]
    for proc in consumers:
        await spawner.wait_line(proc, "READY")

    async def holder() -> subprocess.Popen[bytes] | None:
        """The running consumer that holds the most leases right now (server's view)."""
        leases = {r["w"]: r["n"] for r in await sql(
            dsn, "SELECT consumer_worker_id AS w, count(*) AS n FROM pgqrs_messages "
                 "WHERE vt > now() AND consumer_worker_id IS NOT NULL GROUP BY 1")}
        ranked = []
        for proc, out in spawner.running:
            workers = {r["w"] for r in read_records(out) if r["k"] == "d"}
            if proc in consumers and proc.poll() is None and workers:
                ranked.append((leases.get(workers.pop(), 0), proc.pid, proc))
        best = max(ranked, default=None, key=lambda t: t[:2])
        return best[2] if best is not None and best[0] > 0 else None

    samples, violations = 0, []
    kills = 0
    deadline = time.monotonic() + 100
    # Kills keyed to progress, not to the clock: on a fast (or idle) machine the queue can
    # drain before a timer fires, and a kill that never happens tests nothing.
    kill_at = [round(expected * f) for f in (0.1, 0.3, 0.5, 0.7)]
    while True:
        assert time.monotonic() < deadline, "the queue was not drained in time"
        # Sampled from the server: per group at most one claimable and one leased message.
        bad = await sql(dsn, """
            SELECT group_key, count(*) FILTER (WHERE NOT parked) AS heads,
                   count(*) FILTER (WHERE consumer_worker_id IS NOT NULL AND vt > now())
                   AS leased
            FROM pgqrs_messages WHERE group_key IS NOT NULL GROUP BY group_key
            HAVING count(*) FILTER (WHERE NOT parked) > 1
                OR count(*) FILTER (WHERE consumer_worker_id IS NOT NULL AND vt > now()) > 1
            """)
        samples += 1
        violations += [dict(r) for r in bad]
        due = kills < len(kill_at) and await scalar(
            dsn, "SELECT count(*) FROM pgqrs_archive") >= kill_at[kills]
        victim = await holder() if due else None
        if victim is not None:
            os.kill(victim.pid, signal.SIGKILL)  # mid-handler, holding group heads
            consumers.append(consumer())
            kills += 1
        produced_all = all(p.poll() is not None for p in producers)
        if produced_all and not await scalar(dsn, "SELECT count(*) FROM pgqrs_messages"):
            break
        await asyncio.sleep(0.02)
    for proc in producers:
        assert proc.returncode == 0, spawner.log(proc)
    for proc in consumers:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            assert await spawner.wait(proc) == 0, spawner.log(proc)
    elapsed = time.monotonic() - began
    assert violations == [], violations[:5]
    assert kills >= 2, kills

    records = spawner.records()
    produced = [i for r in records if r["k"] == "batch" for i in r["ids"]]
    archive = await sql(dsn, "SELECT original_msg_id AS m, group_key AS g, "
                             "(payload->>'n')::int AS n, dead_letter, "
                             "extract(epoch FROM dequeued_at)::float8 AS s, "
                             "extract(epoch FROM archived_at)::float8 AS a FROM pgqrs_archive")
    assert len(produced) == expected
    assert sorted(r["m"] for r in archive) == sorted(produced)  # none lost, none twice
    assert not any(r["dead_letter"] for r in archive)
    # From the archive's own timestamps: within a group, in order, one after the other.
    by_group: dict[str, list[Any]] = defaultdict(list)
    for row in archive:
        by_group[row["g"]].append(row)
    for rows in by_group.values():
        rows.sort(key=lambda r: r["m"])
        assert [r["n"] for r in rows] == list(range(PER_GROUP))
        for prev, nxt in itertools.pairwise(rows):
            assert nxt["a"] > prev["a"], (prev, nxt)  # archived in order
            assert nxt["s"] >= prev["a"] - CLAIM_LAG, (prev, nxt)
    # From the consumers' records (killed ones included): a delivery of the next message
    # of a group began only after the previous message was archived; a redelivery of the
    # same message only after its previous lease ended.
    archived_at = {r["m"]: r["a"] for r in archive}
    deliveries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record["k"] == "d" and record["o"] == "start":
            deliveries[record["grp"]].append(record)
    redelivered = 0
    for items in deliveries.values():
        items.sort(key=lambda d: (d["s"], d["r"]))
        for prev, nxt in itertools.pairwise(items):
            if prev["m"] == nxt["m"]:
                redelivered += 1
                assert nxt["s"] >= prev["v"] - TOLERANCE, (prev, nxt)
            else:
                assert nxt["s"] >= archived_at[prev["m"]] - CLAIM_LAG, (prev, nxt)
    second = sum(1 for r in records if r["k"] == "d" and r["o"] == "start" and r["r"] > 1)
    assert redelivered > 0 and second > 0  # the kills did leave leased heads behind
    print(f"\ngroups: messages={expected} groups={len(by_group)} kills={kills} "
          f"samples={samples} redelivered={redelivered}/{second} seconds={elapsed:.1f}")
