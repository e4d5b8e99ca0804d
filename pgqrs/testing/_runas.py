"""Running PostgreSQL as someone else: PostgreSQL refuses to run as root.

When the effective uid is 0 the server runs as an unprivileged account (the ``run_as``
argument, else ``postgres``, else ``nobody``). That account must be able to reach the
binaries and the storage directory, which :func:`can_run` and :func:`can_traverse` check
before anything is started. :func:`pdeathsig_hook` makes the kernel stop the server when
the process that started it dies, so a killed test run leaves no postmaster behind.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import ENV_USER, EphemeralPostgresError, is_linux

_PR_SET_PDEATHSIG = 1
_DEFAULT_USERS = ("postgres", "nobody")


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account PostgreSQL runs as when we are root."""

    name: str
    uid: int
    gid: int


def pick_user(wanted: str | None) -> RunAs | None:
    """Pick the account PostgreSQL runs as, or ``None`` when we are not root.

    Args:
        wanted: An account name; ``None`` tries ``postgres``, then ``nobody``.

    Raises:
        EphemeralPostgresError: We are root and no usable (existing, non-root) account was
            found.
    """
    if os.geteuid() != 0:
        return None
    names = [wanted] if wanted else list(_DEFAULT_USERS)
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise EphemeralPostgresError(
                f"PostgreSQL refuses to run as root, and user {name!r} has uid 0; "
                f"pass run_as= (or set {ENV_USER}) an unprivileged user"
            )
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    if wanted:
        raise EphemeralPostgresError(f"run_as={wanted!r} names no existing user")
    raise EphemeralPostgresError(
        "running as root, but neither a 'postgres' nor a 'nobody' user exists; PostgreSQL "
        f"refuses to run as root, so pass run_as= (or set {ENV_USER}) an unprivileged user"
    )


def subprocess_args(who: RunAs | None) -> dict[str, Any]:
    """Extra ``subprocess`` arguments that switch to ``who`` (none when ``who`` is None)."""
    if who is None:
        return {}
    return {"user": who.uid, "group": who.gid, "extra_groups": []}


def _mode_allows(st: os.stat_result, who: RunAs, bit: int) -> bool:
    """Evaluate the permission ``bit`` (4=r, 2=w, 1=x) of ``st`` for ``who``.

    Only the primary group counts, because the server runs with ``extra_groups=[]``.
    """
    if who.uid == 0:
        return True
    if st.st_uid == who.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid == who.gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def can_traverse(directory: Path, who: RunAs) -> bool:
    """Tell whether ``who`` may search ``directory`` and each of its ancestors."""
    try:
        resolved = directory.resolve()
        for part in (resolved, *resolved.parents):
            if not _mode_allows(os.stat(part), who, 1):
                return False
    except OSError:
        return False
    return True


def can_run(bindir: Path, who: RunAs) -> bool:
    """Tell whether ``who`` can reach and execute ``initdb`` and ``postgres`` in ``bindir``."""
    try:
        for name in ("initdb", "postgres"):
            exe = (bindir / name).resolve()
            if not can_traverse(exe.parent, who):
                return False
            st = os.stat(exe)
            if not (stat.S_ISREG(st.st_mode) and _mode_allows(st, who, 1)):
                return False
    except OSError:
        return False
    return True


_prctl: Callable[..., int] | None = None
_prctl_resolved = False


def _resolve_prctl() -> Callable[..., int] | None:
    global _prctl, _prctl_resolved
    if not _prctl_resolved:
        _prctl_resolved = True
        try:
            func = ctypes.CDLL(None, use_errno=True).prctl
            func.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
            func.restype = ctypes.c_int
            _prctl = func
        except (OSError, AttributeError):
            _prctl = None
    return _prctl


def pdeathsig_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGQUIT the server when its parent dies.

    Linux only, and only from the main thread: the signal fires when the *thread* that
    spawned the child exits. Everything is resolved here, in the parent, because the hook
    runs after the uid switch and must not import anything.
    """
    if not is_linux() or threading.current_thread() is not threading.main_thread():
        return None
    prctl = _resolve_prctl()
    if prctl is None:
        return None
    option = _PR_SET_PDEATHSIG
    signum = int(signal.SIGQUIT)
    parent = os.getpid()
    getppid = os.getppid
    exit_now = os._exit

    def hook() -> None:
        prctl(option, signum, 0, 0, 0)
        if getppid() != parent:  # the parent died before prctl took effect
            exit_now(1)

    return hook
