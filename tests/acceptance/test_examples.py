"""Every example in examples/ runs, unchanged, against a fresh database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, dsn: str) -> str:
    env = {**os.environ, "PGQRS_DSN": dsn}
    result = subprocess.run([sys.executable, "-W", "error", str(EXAMPLES / name)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr  # no warnings, no leaked connections
    return result.stdout


async def workers(dsn: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT hostname, status::text FROM pgqrs_workers ORDER BY id")
        return [(r["hostname"], r["status"]) for r in rows]
    finally:
        await conn.close()


async def test_full_example_then_consumer_example(empty_dsn: str) -> None:
    out = run_example("full_example.py", empty_dsn)
    assert out.count("Sent task") == 5 and "All messages sent!" in out
    out = run_example("consumer_example.py", empty_dsn)
    assert "Archived 5 of 5" in out and "pending=0 archived=5" in out
    # The seed never closes its producer: pgqrs still leaves the row stopped, not "live".
    assert await workers(empty_dsn) == [("producer-1", "stopped"), ("consumer-1", "stopped")]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("basic_enqueue.py", "Sent notification: 1"),
        ("send_multiple.py", "Sent 2 emails"),
        ("error_handling.py", "Gave up: ValidationError"),
        ("service_class.py", "Sent 2 notifications"),
    ],
)
async def test_seed_examples(dsn: str, name: str, expected: str) -> None:
    assert expected in run_example(name, dsn)
