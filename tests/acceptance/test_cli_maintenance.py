"""``pgqrs archive purge``, ``pgqrs schedule ...`` and ``pgqrs maintain``, as subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import asyncpg

from pgqrs import Admin


def pgqrs(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGQRS_DSN": dsn}
    return subprocess.run([sys.executable, "-m", "pgqrs", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def as_json(*args: str, dsn: str) -> object:
    result = pgqrs(*args, "--format", "json", dsn=dsn)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_archive_purge(dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("q")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("""INSERT INTO pgqrs_archive (original_msg_id, queue_id, payload,
            enqueued_at, read_ct, archived_at, dead_letter)
            SELECT 0, 1, '{}', now(), 1, now() - interval '10 days', i % 10 = 0
            FROM generate_series(1, 2500) i""")
    finally:
        await conn.close()
    assert as_json("archive", "purge", "--older-than", "7d", "--dry-run", dsn=dsn) == {
        "would_purge": 2500}
    assert as_json("archive", "purge", dsn=dsn) == {"purged": 0}  # no retention: kept
    assert as_json("archive", "purge", "--older-than", "7d", "--keep-dead", "--queue", "q",
                   "--batch-size", "400", dsn=dsn) == {"purged": 2250}
    table = pgqrs("archive", "purge", "--older-than", "7d", dsn=dsn)
    assert table.returncode == 0 and "purged  250" in table.stdout, table.stdout
    bad = pgqrs("archive", "purge", "--older-than", "7d", "--queue", "nope", dsn=dsn)
    assert bad.returncode == 1 and bad.stderr.startswith("pgqrs: error: ")
    assert pgqrs("archive", "purge", "--older-than", "soon", dsn=dsn).returncode == 2


async def test_schedule_commands_and_maintain_once(dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("q")
    added = as_json("schedule", "add", "q", "tick", "* * * * * *", '{"t": 1}',
                    "--header", "tenant=a", dsn=dsn)
    assert isinstance(added, dict)
    assert (added["name"], added["cron"], added["headers"], added["catch_up"]) == (
        "tick", "* * * * * *", {"tenant": "a"}, True)
    listed = pgqrs("schedule", "list", dsn=dsn)
    assert listed.returncode == 0 and "tick" in listed.stdout
    time.sleep(1.1)  # one tick due
    once = as_json("maintain", "--once", dsn=dsn)
    assert isinstance(once, dict) and once["ran"] is True and once["scheduled"] >= 1
    assert as_json("message", "count", "q", dsn=dsn) == {"count": once["scheduled"]}
    assert as_json("schedule", "remove", "tick", dsn=dsn) == {"removed": "tick"}
    missing = pgqrs("schedule", "remove", "tick", dsn=dsn)
    assert missing.returncode == 1 and "No schedule named 'tick'" in missing.stderr
    bad = pgqrs("schedule", "add", "q", "x", "not cron", "{}", dsn=dsn)
    assert bad.returncode == 1 and "cron" in bad.stderr


async def lease_rounds(dsn: str) -> int:
    """How many rounds the current holder has finished (0 or 1: enough to know it runs)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT holder, last_round_at FROM pgqrs_maintenance")
        return 0 if row["holder"] is None or row["last_round_at"] is None else 1
    finally:
        await conn.close()


async def test_maintain_runs_until_sigterm_and_logs_its_rounds(dsn: str) -> None:
    env = {**os.environ, "PGQRS_DSN": dsn}
    proc = subprocess.Popen([sys.executable, "-m", "pgqrs", "maintain", "--interval", "0.3s"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not await lease_rounds(dsn):  # started, leads, finished a round
            assert time.monotonic() < deadline and proc.poll() is None
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "now leads" in err and "maintenance round by" in err and "stopped" in err, err
    assert err.count("maintenance round by") >= 2, err
    assert (await lease_rounds(dsn)) == 0  # the lease was given up
