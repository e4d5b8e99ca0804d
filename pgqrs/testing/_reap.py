"""Cleaning up after servers whose owner died without stopping them.

Every server directory holds ``owner.pid`` (pid and, on Linux, start time of the process
that started it). A directory whose owner is gone is stale: its postmaster (if any is still
alive) gets SIGQUIT and the directory is removed. :meth:`EphemeralPostgres.start` reaps its
storage root before creating a new server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import time
from pathlib import Path

from ._common import POLL_INTERVAL, is_linux
from ._storage import DIR_PREFIX, SCRATCH_PREFIX, storage_root

_YOUNG_DIR_SECONDS = 60.0
_SCRATCH_MAX_AGE = 3600.0


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), if readable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux only)."""
    fields = _proc_stat_fields(pid) if is_linux() else None
    if fields is None or len(fields) < 20:
        return None
    return fields[19]


def _pid_alive(pid: int) -> bool:
    """Tell whether ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if is_linux():
        fields = _proc_stat_fields(pid)
        if fields is None:
            return not Path("/proc/self").exists()  # no /proc: trust kill()
        if fields and fields[0] in ("Z", "X"):
            return False
    return True


def _read_owner(directory: Path) -> tuple[int, str | None] | None:
    """Parse ``owner.pid``: ``(pid, start_time)``, or ``None`` if absent or unparsable."""
    try:
        parts = (directory / "owner.pid").read_text().split()
    except FileNotFoundError:
        return None
    if not parts or not parts[0].isdigit():
        return None
    return int(parts[0]), (parts[1] if len(parts) > 1 else None)


def _owner_alive(owner: tuple[int, str | None]) -> bool:
    pid, started = owner
    if not _pid_alive(pid):
        return False
    if started is not None:
        now = start_time(pid)
        if now is not None and now != started:
            return False  # the pid was reused by another process
    return True


def _looks_like_postgres(pid: int) -> bool:
    if not is_linux():
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"postgres" in cmdline or b"postmaster" in cmdline


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _kill_stale_postmaster(directory: Path) -> None:
    try:
        first = (directory / "data" / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return
    if not first.isdigit():
        return
    pid = int(first)
    if pid == os.getpid() or not _pid_alive(pid) or not _looks_like_postgres(pid):
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGQUIT)
    if not _wait_gone(pid, 3.0):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 2.0)


def reap_stale(root: str | os.PathLike[str] | None = None) -> int:
    """Remove server directories left behind by processes that died without cleaning up.

    Scans ``pgqrs-pg-*`` in ``root``. Where the process named in ``owner.pid`` is gone (a
    zombie counts as gone), sends SIGQUIT to the postmaster named in ``data/postmaster.pid``
    if it is still alive, and removes the directory. Directories this process may not touch
    are skipped. :meth:`EphemeralPostgres.start` calls this automatically.

    Args:
        root: Directory to scan; by default the one :class:`EphemeralPostgres` picks when
            given no ``storage_dir``.

    Returns:
        The number of directories removed.
    """
    base = Path(root) if root is not None else storage_root(None, None)
    removed = 0
    try:
        entries = list(base.glob(DIR_PREFIX + "*"))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        try:
            st = entry.lstat()
            if not stat.S_ISDIR(st.st_mode):
                continue
            owner = _read_owner(entry)
        except OSError:
            continue  # e.g. another user's 0700 directory
        if owner is None:
            if now - st.st_mtime < _YOUNG_DIR_SECONDS:
                continue  # probably being created right now
        elif _owner_alive(owner):
            continue
        _kill_stale_postmaster(entry)
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed += 1
    # Half-finished copies of a binary bundle from a crashed process.
    with contextlib.suppress(OSError):
        for scratch in base.glob(SCRATCH_PREFIX + "*"):
            with contextlib.suppress(OSError):
                if now - scratch.lstat().st_mtime > _SCRATCH_MAX_AGE:
                    shutil.rmtree(scratch, ignore_errors=True)
    return removed
