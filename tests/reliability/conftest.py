"""Fixtures of the reliability suite: processes, private servers, pgbouncer.

Everything listens on 127.0.0.1. Servers and pgbouncer started here are stopped by their
fixtures; every child process is killed by the fixture that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pgqrs.testing import EphemeralPostgres

from .support import (
    AuthServer,
    Bouncer,
    Procs,
    find_pgbouncer,
    free_port,
    sql,
    unprivileged_user,
)


@pytest.fixture
def procs() -> Iterator[Procs]:
    with tempfile.TemporaryDirectory(prefix="pgqrs-rel-") as tmp:
        p = Procs(Path(tmp))
        try:
            yield p
        finally:
            p.kill_all()


@pytest.fixture
def restartable_server() -> Iterator[EphemeralPostgres]:
    """A private server for one test, with durable commits so a crash loses nothing."""
    server = EphemeralPostgres(extra_conf={"synchronous_commit": "on"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def auth_server() -> Iterator[AuthServer]:
    server = EphemeralPostgres()
    server.start()
    try:
        hba = server.directory / "data" / "pg_hba.conf"
        hba.write_text(
            "local all postgres trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "local all all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        asyncio.run(sql(server.dsn, "SELECT pg_reload_conf()"))
        yield AuthServer(server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pgbouncer(request: pytest.FixtureRequest) -> Iterator[Bouncer]:
    """pgbouncer in transaction-pooling mode in front of the session's server."""
    binary = find_pgbouncer()  # first: without pgbouncer, skip (or fail) before any server
    server_dsn: str = request.getfixturevalue("server_dsn")
    target = urlsplit(server_dsn)
    root = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    directory = Path(tempfile.mkdtemp(prefix="pgqrs-bouncer-", dir=root))
    directory.chmod(0o755)
    user = unprivileged_user()
    port = free_port()
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={target.hostname} port={target.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
default_pool_size = 3
max_client_conn = 500
max_db_connections = 20
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
""")
    if user is not None:
        for path in (directory, *directory.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
    proc = subprocess.Popen(
        [binary, str(directory / "pgbouncer.ini")], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        **({"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}))
    bouncer = Bouncer(port, directory, proc)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"pgbouncer did not start:\n{bouncer.log()}", pytrace=False)
            time.sleep(0.05)
        yield bouncer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keep every connection attempt on this machine: names other than IP literals and
    ``localhost`` are refused and recorded instead of being sent to a resolver."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (None, "", "localhost"):
            try:
                ipaddress.ip_address(str(name).split("%")[0])
            except ValueError:
                asked.append(str(name))
                raise socket.gaierror(socket.EAI_NONAME, "DNS blocked by the test") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return asked
