"""Helpers of the reliability suite: SQL, DSNs, child processes, lease checks, servers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import pwd
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from _programs import require_program

from pgqrs.testing import EphemeralPostgres

HERE = Path(__file__).resolve().parent
PROC = HERE / "proc.py"
PGBOUNCER_APT = "apt-get install -y pgbouncer"


# -- SQL and DSN helpers ---------------------------------------------------------------------


TEST_APP = "pgqrs-reliability-test"
"""``application_name`` of the test's own connections (killers spare them)."""


async def connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=10,
                                 server_settings={"application_name": TEST_APP})


async def sql(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def execute(dsn: str, script: str) -> None:
    """Run a multi-statement script (no parameters)."""
    conn = await connect(dsn)
    try:
        await conn.execute(script)
    finally:
        await conn.close()


async def scalar(dsn: str, query: str, *args: object) -> Any:
    return (await sql(dsn, query, *args))[0][0]


def with_netloc(dsn: str, *, user: str | None = None, password: str | None = None,
                host: str | None = None, port: int | None = None,
                database: str | None = None) -> str:
    """``dsn`` with some of its parts replaced (the password URL-encoded)."""
    parts = urlsplit(dsn)
    user = user if user is not None else (parts.username or "")
    auth = quote(user, safe="")
    if password is not None:
        auth += ":" + quote(password, safe="")
    netloc = f"{auth}@{host or parts.hostname}:{port or parts.port}"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, ""))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def install_fresh(server_dsn: str, name: str, *queues: str) -> str:
    """Create database ``name`` on the server, install pgqrs and the queues; its DSN."""
    from pgqrs import Admin

    await sql(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await sql(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_netloc(server_dsn, database=name)
    async with Admin(dsn) as admin:
        await admin.install()
        for q in queues:
            await admin.create_queue(q)
    return dsn


async def table_counts(dsn: str) -> dict[str, int]:
    """Row counts of the four pgqrs tables (to show that nothing changed)."""
    out: dict[str, int] = {}
    for table in ("pgqrs_queues", "pgqrs_workers", "pgqrs_messages", "pgqrs_archive"):
        out[table] = int(await scalar(dsn, f"SELECT count(*) FROM {table}"))
    return out


def leaked_resources() -> list[str]:
    """Collect garbage and return the ResourceWarnings it produced: connections, sockets
    or transports that were dropped without being closed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Procs:
    """Child processes running ``proc.py``; each writes records to its own file."""

    directory: Path
    running: list[tuple[subprocess.Popen[bytes], Path, Path]] = field(default_factory=list)
    _n: int = 0

    def spawn(self, **cfg: Any) -> tuple[subprocess.Popen[bytes], Path]:
        self._n += 1
        out = self.directory / f"{cfg['mode']}-{self._n}.jsonl"
        cfg["out"] = str(out)
        log = self.directory / f"{cfg['mode']}-{self._n}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, str(PROC), json.dumps(cfg)],
                                    stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.running.append((proc, out, log))
        return proc, out

    def log_of(self, proc: subprocess.Popen[bytes], tail: int = 3000) -> str:
        for p, _, log in self.running:
            if p is proc:
                return log.read_text(errors="replace")[-tail:]
        return ""

    async def wait_line(self, proc: subprocess.Popen[bytes], text: str,
                        timeout: float = 30) -> None:
        """Wait until the process printed a line starting with ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(text) for line in self.log_of(proc).splitlines()):
                return
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"process never printed {text!r}:\n{self.log_of(proc)}")

    async def wait(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"process {proc.args!r:.200} did not exit in {timeout}s:"
                                     f"\n{self.log_of(proc)}")
            await asyncio.sleep(0.05)
        return proc.returncode

    def kill_all(self) -> None:
        for proc, _, _ in self.running:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        # A SIGKILL can only cut the process between two write(2) calls, never inside one.
        records.append(json.loads(line))
    return records


# -- lease-window checks -------------------------------------------------------------------------

TOLERANCE = 0.001  # seconds: server timestamps are whole microseconds


def lease_overlaps(deliveries: list[dict[str, Any]]) -> list[tuple[dict[str, Any], ...]]:
    """Pairs of deliveries of one message whose lease windows overlap.

    A delivery's lease starts at the server's ``dequeued_at`` (``s``) and ends at ``vt``
    (``v``), or earlier at ``e`` if the handler failed (the release comes after ``e``).
    The next delivery may start only once the previous lease ended: the claim requires
    ``vt <= now()`` and a release sets ``vt = now() + delay`` on the server.
    """
    bad: list[tuple[dict[str, Any], ...]] = []
    by_message: dict[int, list[dict[str, Any]]] = {}
    for d in deliveries:
        by_message.setdefault(d["m"], []).append(d)
    for items in by_message.values():
        items.sort(key=lambda d: (d["s"], d["r"]))
        for prev, nxt in itertools.pairwise(items):
            end = min(prev["v"], prev["e"]) if prev["o"] == "fail" else prev["v"]
            if nxt["s"] < end - TOLERANCE or nxt["r"] <= prev["r"]:
                bad.append((prev, nxt))
    return bad


# -- private PostgreSQL servers ---------------------------------------------------------------


def restart_postgres(server: EphemeralPostgres, how: str, outage: float) -> float:
    """Stop the postmaster (``fast``: SIGINT, ``immediate``: SIGQUIT), stay down for
    ``outage`` seconds, start it again on the same port and data; the down time."""
    began = time.monotonic()
    server.restart(how, downtime=outage)
    return time.monotonic() - began


@dataclass
class AuthServer:
    """A private server where roles other than ``postgres`` log in with a password."""

    server: EphemeralPostgres

    @property
    def dsn(self) -> str:
        return self.server.dsn

    async def create_role(self, name: str, password: str, *extra: str) -> None:
        await sql(self.dsn, f'DROP ROLE IF EXISTS "{name}"')
        escaped = password.replace("'", "''")
        await sql(self.dsn, f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{escaped}' "
                  + " ".join(extra))


# -- pgbouncer ----------------------------------------------------------------------------------


@dataclass
class Bouncer:
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]

    def dsn_for(self, dsn: str) -> str:
        """``dsn`` routed through pgbouncer (same user and database)."""
        return with_netloc(dsn, host="127.0.0.1", port=self.port)

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("PGQRS_PG_USER"), "postgres", "nobody"):
        if name:
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
    raise RuntimeError("running as root but found no unprivileged user for pgbouncer")


def find_pgbouncer() -> str:
    """pgbouncer's path; a missing one skips the test locally and fails it in CI."""
    return require_program("pgbouncer", install=PGBOUNCER_APT)


