"""The pgqrs command line, run as a subprocess against the test database."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest


def pgqrs(*args: str, dsn: str | None = None, stdin: str | None = None,
          ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"PGQRS_DSN", "DATABASE_URL", "PGQRS_TEST_DSN"}}
    if dsn is not None:
        env["PGQRS_DSN"] = dsn
    return subprocess.run([sys.executable, "-m", "pgqrs", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def as_json(*args: str, dsn: str) -> object:
    result = pgqrs(*args, "--format", "json", dsn=dsn)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_queue_message_archive_round_trip(dsn: str) -> None:
    created = as_json("queue", "create", "jobs", dsn=dsn)
    assert created["queue_name"] == "jobs"  
    enq = as_json("message", "enqueue", "jobs", '{"n": 1}', dsn=dsn)
    assert as_json("message", "count", "jobs", dsn=dsn) == {"count": 1}
    got = as_json("message", "get", str(enq["id"]), dsn=dsn)  
    assert got["payload"] == {"n": 1}  
    (claimed,) = as_json("message", "dequeue", "jobs", "--vt", "5m", dsn=dsn)  # type: ignore[misc]
    assert claimed["read_ct"] == 1
    assert as_json("message", "archive", str(claimed["id"]), dsn=dsn)["archived"] is True  
    assert as_json("archive", "count", dsn=dsn) == {"count": 1}
    metrics = as_json("queue", "metrics", "jobs", dsn=dsn)
    assert metrics["archived_messages"] == 1  
    table = pgqrs("queue", "list", dsn=dsn)
    assert table.returncode == 0 and "jobs" in table.stdout and "queue_name" in table.stdout


def test_bulk_enqueue_from_stdin(dsn: str) -> None:
    assert pgqrs("queue", "create", "bulk", dsn=dsn).returncode == 0
    lines = "\n".join(json.dumps({"i": i}) for i in range(1200))
    result = pgqrs("message", "enqueue", "bulk", "--file", "-", "--format", "json", dsn=dsn,
                   stdin=lines)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["count"] == 1200


def test_global_options_before_or_after_subcommand(dsn: str) -> None:
    assert pgqrs("--dsn", dsn, "--format", "json", "queue", "list").returncode == 0
    assert pgqrs("queue", "list", "--dsn", dsn, "--format", "json").returncode == 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("queue", "get", "nope"), "does not exist"),
        (("message", "enqueue", "nope", "{}"), "does not exist"),
        (("queue", "create", "x"), None),  # succeeds; then the bad JSON case below
    ],
)
def test_operational_errors_exit_1_with_one_line(dsn: str, args: tuple[str, ...],
                                                fragment: str | None) -> None:
    result = pgqrs(*args, dsn=dsn)
    if fragment is None:
        assert result.returncode == 0
        bad = pgqrs("message", "enqueue", "x", "{not json", dsn=dsn)
        assert bad.returncode == 1 and "not valid JSON" in bad.stderr
        return
    assert result.returncode == 1
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2() -> None:
    assert pgqrs("queue", "bogus").returncode == 2
    assert pgqrs("nonsense").returncode == 2


def test_no_dsn_is_a_clear_error() -> None:
    result = pgqrs("queue", "list")
    assert result.returncode == 1 and "PGQRS_DSN" in result.stderr


def test_schema_not_installed(empty_dsn: str) -> None:
    result = pgqrs("verify", dsn=empty_dsn)
    assert result.returncode == 1 and "pgqrs install" in result.stderr
    assert pgqrs("install", dsn=empty_dsn).returncode == 0
    assert pgqrs("verify", dsn=empty_dsn).returncode == 0


def test_password_never_printed(dsn: str) -> None:
    secret = "s3cr3t-pw"
    bad = dsn.replace("postgres@", f"nosuchuser:{secret}@", 1)
    for args in (("queue", "list"), ("verify",), ("stats", "--format", "json"),
                 ("install",), ("queue", "list", "-v")):
        result = pgqrs(*args, dsn=bad)
        assert result.returncode == 1
        assert secret not in result.stdout + result.stderr
    unreachable = f"postgresql://u:{secret}@127.0.0.1:1/db"
    result = pgqrs("queue", "list", "--dsn", unreachable)
    assert result.returncode == 1 and secret not in result.stderr


def test_install_sql_needs_no_database() -> None:
    result = pgqrs("install", "--sql")
    assert result.returncode == 0
    assert "CREATE TABLE public.pgqrs_queues" in result.stdout


def test_demo_against_given_database(empty_dsn: str) -> None:
    result = pgqrs("demo", dsn=empty_dsn)
    assert result.returncode == 0, result.stderr
    assert "Archived 5 messages." in result.stdout


async def test_every_command_in_both_formats(dsn: str) -> None:
    """Drive each command; JSON output is checked against the database state."""
    from pgqrs import Admin, Consumer, Producer

    def ok(*args: str) -> Any:
        """A read-only command: as a table, then as JSON (returned parsed)."""
        table = pgqrs(*args, dsn=dsn)
        assert table.returncode == 0 and table.stdout.strip(), (args, table.stderr)
        return as_json(*args, dsn=dsn)

    def run(*args: str) -> Any:
        """A command that changes something: once, as JSON."""
        return as_json(*args, dsn=dsn)
    async with Admin(dsn, max_read_ct=1) as admin:
        await admin.create_queue("q")
        async with Producer(dsn, "q", "prod", 1) as producer:
            ids = await producer.enqueue_batch([{"i": i} for i in range(4)])
        consumer = Consumer(dsn, "q", "cons", 2)
        held = await consumer.dequeue(2, visibility_timeout=0.01)
        worker_id = consumer.worker_id
        assert worker_id is not None

        assert ok("stats")["total_messages"] == 4  
        assert ok("verify")["ok"] is True  
        assert ok("queue", "list")[0]["queue_name"] == "q"  
        assert ok("queue", "get", "q")["queue_name"] == "q"  
        assert len(ok("queue", "metrics")) == 1  
        assert ok("message", "count")["count"] == 4  
        workers = ok("worker", "list", "--queue", "q")
        assert {w["hostname"] for w in workers} == {"prod", "cons"}  
        assert ok("worker", "get", str(worker_id))["status"] == "ready"  
        assert ok("worker", "health", "--stale-after", "1m")[0]["total_workers"] == 2  
        assert ok("worker", "stats")[0]["queue_name"] == "q"  
        messages = ok("worker", "messages", str(worker_id))
        assert {m["id"] for m in messages} == {m.id for m in held}  

        await asyncio.sleep(0.05)  # the short leases run out: two dead letters
        result = run("queue", "archive-dlq", "q")  # the queue's threshold: 1
        assert result == {"archived_dead_letters": sorted(m.id for m in held)}
        dead = ok("archive", "list", "--dead")
        assert len(dead) == 2  
        assert ok("archive", "count", "--dead")["count"] == 2  
        assert run("archive", "replay", str(dead[0]["id"]))["message_id"] > ids[-1]
        assert run("archive", "delete", str(dead[1]["id"]))["deleted"] is True
        assert ok("archive", "count")["count"] == 0  

        assert run("message", "delete", str(ids[2]))["deleted"] is True
        assert pgqrs("worker", "suspend", str(worker_id), dsn=dsn).returncode == 0
        assert (await admin.get_worker(worker_id)).status == "suspended"
        assert pgqrs("worker", "resume", str(worker_id), dsn=dsn).returncode == 0
        await consumer.dequeue(1)
        assert run("worker", "release", str(worker_id))["released"] == 1
        assert pgqrs("worker", "stop", str(worker_id), dsn=dsn).returncode == 0
        assert (await admin.get_worker(worker_id)).status == "stopped"
        assert run("reclaim", "--older-than", "1h") == {"q": 0}
        assert run("worker", "delete", str(worker_id)) == {"deleted": worker_id}
        assert run("worker", "purge", "--older-than", "0s") == {"purged": 1}  # "prod"
        assert run("queue", "purge", "q")["purged"] == 2  # ids[3] and the replayed one
        assert pgqrs("queue", "delete", "q", dsn=dsn).returncode == 0
        assert await admin.list_queues() == []
        await consumer.close()


def test_help_reads_well() -> None:
    top = pgqrs("--help")
    assert top.returncode == 0
    for command in ("install", "verify", "demo", "stats", "reclaim", "queue", "message",
                    "worker", "archive"):
        assert command in top.stdout
        assert pgqrs(command, "--help").returncode == 0


# -- the command tree: one registered handler per leaf -------------------------------------


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = (),
            ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Walk the real argparse tree (not the registry) down to its leaf commands."""
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        yield path, parser
    for action in children:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


def test_every_leaf_command_has_its_own_handler_and_help(
        capsys: pytest.CaptureFixture[str]) -> None:
    from pgqrs.cli import GROUPS, build_parser, main

    leaves = dict(_leaves(build_parser()))
    registered = {((g.name,) if g.name else ()) + (c.name,): c.handler
                  for g in GROUPS for c in g.commands}
    assert set(leaves) == set(registered)
    spec = {(c,) for c in ("install", "verify", "demo", "stats", "reclaim", "dashboard")} | {
        (group, action)
        for group, actions in (
            ("queue", "create update pause resume list get delete purge metrics archive-dlq"),
            ("message", "enqueue dequeue archive delete get count"),
            ("worker", "list get stats health suspend resume stop messages release delete purge"),
            ("archive", "list count delete replay"))
        for action in actions.split()}
    assert spec <= set(leaves)  # SPEC §9; later commands add to it
    # One function per leaf: no handler serves two commands (that is where `if` chains grow).
    assert len(set(registered.values())) == len(registered)
    reference = (Path(__file__).parents[2] / "docs" / "reference" / "cli.md").read_text()
    for path, parser in leaves.items():
        handler = parser.get_default("handler")
        assert handler is registered[path] and inspect.iscoroutinefunction(handler), path
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
        assert exited.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: pgqrs {' '.join(path)} "), path
        # Each command is documented in the reference page.
        assert re.search(rf"`(pgqrs )?{re.escape(' '.join(path))}[ `]", reference), path


@pytest.mark.parametrize("argv", [(), ("queue",), ("message",), ("worker",), ("archive",),
                                  ("queue", "nope"), ("worker", "get", "not-an-id"),
                                  ("reclaim", "--older-than", "soon")])
def test_missing_or_unknown_command_is_a_usage_error(
        argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    from pgqrs.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    assert "usage: pgqrs" in capsys.readouterr().err


def test_install_sql_builds_no_client(empty_dsn: str) -> None:
    """The DDL comes from offline Alembic: any DSN, even one no client accepts, is ignored."""
    expected = pgqrs("install", "--sql")
    assert expected.returncode == 0
    for args, env_dsn in ((("--dsn", "mysql://nowhere/db"), None), ((), "not a url"),
                          (("--dsn", "postgresql://u:pw@127.0.0.1:1/db"), None)):
        result = pgqrs("install", "--sql", *args, dsn=env_dsn)
        assert (result.returncode, result.stdout) == (0, expected.stdout), result.stderr
    other = pgqrs("install", "--sql", "--schema", "other")
    assert "CREATE TABLE other.pgqrs_queues" in other.stdout
    assert "public." not in other.stdout
    bad = pgqrs("install", "--sql", "--schema", "1bad")
    assert bad.returncode == 1 and "Invalid schema name" in bad.stderr

    async def apply() -> None:
        conn = await asyncpg.connect(empty_dsn)
        try:
            await conn.execute(expected.stdout)
        finally:
            await conn.close()

    # What it prints is what `install` would do: applied by hand, `verify` accepts it.
    asyncio.run(apply())
    assert pgqrs("verify", dsn=empty_dsn).returncode == 0


# -- the queue's rules ----------------------------------------------------------------------


def test_queue_policy_commands_in_both_formats(dsn: str) -> None:
    created = as_json("queue", "create", "mail", "--max-read-ct", "3",
                      "--visibility-timeout", "2m", "--retry-backoff-base", "500ms",
                      "--retry-backoff-max", "1h", "--retention", "7d", dsn=dsn)
    assert created == {**created, "queue_name": "mail", "max_read_ct": 3,  # type: ignore[dict-item]
                       "visibility_timeout": 120.0, "retry_backoff_base": 0.5,
                       "retry_backoff_max": 3600.0, "retention": 604800.0, "paused": False}
    plain = as_json("queue", "create", "plain", dsn=dsn)  # the defaults: as before 0.2
    assert {k: plain[k] for k in ("max_read_ct", "visibility_timeout", "retention")} == {  # type: ignore[index]
        "max_read_ct": 5, "visibility_timeout": 30.0, "retention": None}
    table = pgqrs("queue", "get", "mail", dsn=dsn)
    assert table.returncode == 0, table.stderr
    shown = dict(line.split(None, 1) for line in table.stdout.splitlines())
    assert {k: shown[k] for k in ("max_read_ct", "visibility_timeout", "retry_backoff_base",
                                  "retry_backoff_max", "retention", "paused")} == {
        "max_read_ct": "3", "visibility_timeout": "2m", "retry_backoff_base": "500ms",
        "retry_backoff_max": "1h", "retention": "7d", "paused": "False"}

    # update changes only what is given; "forever" clears the retention.
    updated = as_json("queue", "update", "mail", "--max-read-ct", "4", "--retention",
                      "forever", dsn=dsn)
    assert (updated["max_read_ct"], updated["retention"], updated["visibility_timeout"]) == (  # type: ignore[index]
        4, None, 120.0)
    assert "forever" in pgqrs("queue", "get", "mail", dsn=dsn).stdout
    nothing = pgqrs("queue", "update", "mail", dsn=dsn)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    assert "--max-read-ct" in nothing.stderr

    # pause and resume; the list shows the flag.
    assert as_json("queue", "pause", "mail", dsn=dsn)["paused"] is True  # type: ignore[index]
    assert as_json("queue", "pause", "mail", dsn=dsn)["paused"] is True  # type: ignore[index]
    listed = {q["queue_name"]: q["paused"] for q in as_json("queue", "list", dsn=dsn)}  # type: ignore[attr-defined]
    assert listed == {"mail": True, "plain": False}
    assert re.search(r"mail\s.*True", pgqrs("queue", "list", dsn=dsn).stdout)
    assert as_json("queue", "resume", "mail", dsn=dsn)["paused"] is False  # type: ignore[index]

    # Bad values: typed errors from the library (exit 1), bad syntax from argparse (exit 2).
    for args, fragment in ((("create", "x", "--max-read-ct", "0"), "max_read_ct"),
                           (("create", "x", "--visibility-timeout", "0s"), "visibility_timeout"),
                           (("update", "mail", "--retry-backoff-max", "100ms"),
                            "retry_backoff_max"),
                           (("update", "nope", "--max-read-ct", "2"), "does not exist"),
                           (("pause", "nope"), "does not exist")):
        result = pgqrs("queue", *args, dsn=dsn)
        assert result.returncode == 1 and fragment in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    for args in (("create", "x", "--visibility-timeout", "soon"),
                 ("create", "x", "--max-read-ct", "two"),
                 ("update", "mail", "--retention", "always")):
        assert pgqrs("queue", *args, dsn=dsn).returncode == 2, args
    assert "x" not in {q["queue_name"] for q in as_json("queue", "list", dsn=dsn)}  # type: ignore[attr-defined]

    # --max-read-ct on metrics and archive-dlq: accepted, ignored, with a warning.
    old = pgqrs("queue", "metrics", "mail", "--max-read-ct", "1", "--format", "json", dsn=dsn)
    assert old.returncode == 0 and "deprecated and ignored" in old.stderr
    assert json.loads(old.stdout)["queue_name"] == "mail"
    old = pgqrs("queue", "archive-dlq", "--max-read-ct", "1", dsn=dsn)
    assert old.returncode == 0 and "deprecated and ignored" in old.stderr


async def test_dead_letter_scenario_of_issue_13(dsn: str) -> None:
    """A queue created with max_read_ct=2: a consumer delivers a poison message twice
    (dequeued, never acked, its lease runs out); ``queue metrics`` counts it as dead, and a
    default ``Admin().dlq(queue)`` moves it, whatever that Admin's own settings."""
    from pgqrs import Admin, Consumer, Producer

    assert pgqrs("queue", "create", "poison", "--max-read-ct", "2", dsn=dsn).returncode == 0
    async with (Producer(dsn, "poison", "p", 1) as producer,
                Consumer(dsn, "poison", "c", 2) as consumer):
        mid = await producer.enqueue({"poison": True})
        for attempt in (1, 2):
            (message,) = await consumer.dequeue(visibility_timeout=0.2)
            assert (message.id, message.read_ct) == (mid, attempt)
            await asyncio.sleep(0.3)  # crashed mid-handler: the lease runs out
        assert await consumer.dequeue() == []  # never delivered again
    metrics = as_json("queue", "metrics", "poison", dsn=dsn)
    assert (metrics["dead_messages"], metrics["pending_messages"]) == (1, 0)  # type: ignore[index]
    table = pgqrs("queue", "metrics", dsn=dsn)
    assert re.search(r"^poison\s+1\s+0\s+0\s+0\s+1\s", table.stdout, re.M), table.stdout
    async with Admin(dsn) as admin:  # defaults: max_read_ct 5, yet the queue's 2 decides
        assert admin.max_read_ct == 5
        assert await admin.dlq("poison") == [mid]
        (dead,) = await (await admin.get_archive()).list_dlq_messages()
        assert (dead.original_msg_id, dead.read_ct, dead.dead_letter) == (mid, 2, True)
    metrics = as_json("queue", "metrics", "poison", dsn=dsn)
    assert (metrics["dead_messages"], metrics["archived_messages"]) == (0, 1)  # type: ignore[index]
