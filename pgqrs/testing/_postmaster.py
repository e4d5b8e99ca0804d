"""Running the postmaster: initdb, its command line and spawn, readiness, logs, shutdown.

Functions of their arguments only; :class:`~pgqrs.testing.EphemeralPostgres` holds the
state (which process, which port, which directory) and calls them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from ._common import POLL_INTERVAL, EphemeralPostgresError, child_env
from ._runas import RunAs, pdeathsig_hook, subprocess_args

SETTINGS: tuple[tuple[str, str], ...] = (
    # Speed over durability: a throw-away server never needs crash safety.
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    # /dev/shm may be small in containers; mmap keeps dynamic shared memory in the data dir.
    ("dynamic_shared_memory_type", "mmap"),
    ("max_parallel_workers_per_gather", "0"),
    ("max_connections", "200"),
    ("shared_buffers", "64MB"),
)
"""Settings passed with ``-c`` after ``listen_addresses``, ``port`` and the socket directory."""

_INITDB_TIMEOUT = 120.0


def initdb(bindir: Path, directory: Path, who: RunAs | None) -> None:
    """Create the cluster in ``directory/data`` (superuser ``postgres``, trust, UTF8, C).

    Raises:
        EphemeralPostgresError: ``initdb`` could not be run or failed; with its output.
    """
    cmd = [
        str(bindir / "initdb"),
        "-D",
        str(directory / "data"),
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]
    try:
        out = subprocess.run(
            cmd,
            cwd=directory,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=_INITDB_TIMEOUT,
            check=False,
            **subprocess_args(who),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EphemeralPostgresError(f"could not run {cmd[0]}: {exc}") from exc
    if out.returncode != 0:
        text = out.stdout.decode("utf-8", "replace").strip()
        user = f" as user {who.name!r}" if who else ""
        raise EphemeralPostgresError(
            f"initdb from {bindir} failed{user} (exit code {out.returncode}):\n{text}"
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (start-up retries if taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def guc_value(value: str | int | float | bool) -> str:
    """A Python value as a PostgreSQL setting (``True`` → ``on``)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def socket_dir_setting(directory: Path) -> str:
    """``unix_socket_directories`` value, quoted when the path has list separators."""
    text = str(directory)
    if any(ch in text for ch in ', "'):
        return '"' + text.replace('"', '""') + '"'
    return text


def server_cmd(
    bindir: Path,
    directory: Path,
    port: int,
    *,
    tcp: bool,
    extra_conf: Mapping[str, str | int | float | bool],
) -> list[str]:
    """The ``postgres`` command line for the cluster in ``directory/data``."""
    settings: list[tuple[str, str]] = [
        ("listen_addresses", "127.0.0.1" if tcp else ""),
        ("port", str(port)),
        ("unix_socket_directories", socket_dir_setting(directory)),
        *SETTINGS,
    ]
    settings.extend((k, guc_value(v)) for k, v in extra_conf.items())
    cmd = [str(bindir / "postgres"), "-D", str(directory / "data")]
    for name, value in settings:
        cmd += ["-c", f"{name}={value}"]
    return cmd


def spawn(
    bindir: Path,
    directory: Path,
    port: int,
    *,
    tcp: bool,
    extra_conf: Mapping[str, str | int | float | bool],
    who: RunAs | None,
) -> subprocess.Popen[bytes]:
    """Start ``postgres`` in its own session, logging to ``directory/postgres.log``.

    Raises:
        EphemeralPostgresError: The binary could not be run.
    """
    cmd = server_cmd(bindir, directory, port, tcp=tcp, extra_conf=extra_conf)
    hook = pdeathsig_hook()
    with open(directory / "postgres.log", "ab") as log:
        try:
            return subprocess.Popen(
                cmd,
                cwd=directory,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=hook,
                **subprocess_args(who),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EphemeralPostgresError(f"could not run {cmd[0]}: {exc}") from exc


def wait_ready(proc: subprocess.Popen[bytes], directory: Path, timeout: float) -> bool:
    """Poll until ``postmaster.pid`` says ``ready`` (True) or the process exits (False).

    Raises:
        TimeoutError: Neither happened within ``timeout`` seconds.
    """
    pidfile = directory / "data" / "postmaster.pid"
    deadline = time.monotonic() + timeout
    while True:
        try:
            lines = pidfile.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return True
        if proc.poll() is not None:
            return False
        if time.monotonic() >= deadline:
            raise TimeoutError
        time.sleep(POLL_INTERVAL)


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """Shut the postmaster down: SIGINT (fast) for 10 s, SIGQUIT for 5 s, then SIGKILL."""
    steps: list[tuple[signal.Signals, float | None]] = [
        (signal.SIGINT, 10.0),
        (signal.SIGQUIT, 5.0),
        (signal.SIGKILL, None),
    ]
    for signum, grace in steps:
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            proc.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def tail(path: Path, n: int) -> str:
    """The last ``n`` lines of ``path`` (read from its last 256 KiB), or ``""``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-n:]) if n > 0 else ""
