"""``EphemeralPostgres``: a private PostgreSQL server in a temporary directory.

Typical use::

    with EphemeralPostgres() as pg:
        engine = create_async_engine(pg.url("asyncpg"))

The server lives in a fresh ``pgqrs-pg-*`` directory (on ``/dev/shm`` when it has room),
runs with durability switched off, trusts every local connection and is deleted on exit.
When the effective uid is 0 it runs as an unprivileged user (``run_as``, else ``postgres``,
else ``nobody``), because PostgreSQL refuses to run as root.

The class reads no environment variables; :meth:`EphemeralPostgres.from_env` maps
``PGQRS_PG_BINDIR``, ``PGQRS_PG_TMPDIR`` and ``PGQRS_PG_USER`` onto its arguments for the
entry points (``python -m pgqrs.testing``, the pytest plugin, ``pgqrs demo``).
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from . import _postmaster
from ._binaries import postgres_version, select_bindir
from ._common import (
    ENV_BINDIR,
    ENV_TMPDIR,
    ENV_USER,
    EphemeralPostgresError,
)
from ._reap import reap_stale, start_time
from ._runas import RunAs, pick_user
from ._storage import DIR_PREFIX, storage_root

__all__ = ["EphemeralPostgres", "EphemeralPostgresError"]

_PORT_ATTEMPTS = 5
_RESTART_SIGNALS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}

Conf = Mapping[str, str | int | float | bool]


def _optional_path(name: str, value: str | os.PathLike[str] | None) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise EphemeralPostgresError(f"{name} must be a non-empty path or None, not {value!r}")
    return Path(value)


class EphemeralPostgres:
    """A private PostgreSQL server in a temporary directory, deleted when stopped.

    Use it as a context manager (``__enter__`` starts the server, ``__exit__`` stops it) or
    call :meth:`start` and :meth:`stop`. The superuser is ``postgres`` with ``trust``
    authentication; durability is switched off for speed.

    Args:
        bindir: Directory holding ``initdb`` and ``postgres``; by default the first usable
            hit of :func:`~pgqrs.testing.find_bindirs`.
        storage_dir: Directory in which the server's own ``pgqrs-pg-*`` directory is
            created; by default ``/dev/shm`` when it has at least 1 GiB free, else the
            system temporary directory. When running as root, the server's user must be
            able to reach it.
        run_as: When the effective uid is 0, the OS user the server runs as (PostgreSQL
            refuses root); by default ``postgres``, else ``nobody``. Ignored otherwise: the
            server then runs as the current user.
        port: TCP port (also names the Unix socket); by default a free port is picked and
            start-up is retried with another one if it turns out to be taken.
        tcp: Listen on ``127.0.0.1``; if false, only on the Unix socket in the server's
            private (mode 0700) directory, and the DSN uses ``host=<dir>``.
        startup_timeout: Seconds to wait for the server to accept connections.
        extra_conf: Further server settings, passed as ``-c name=value`` after the defaults.

    Raises:
        EphemeralPostgresError: An argument has the wrong type or value.
    """

    def __init__(
        self,
        bindir: str | os.PathLike[str] | None = None,
        *,
        storage_dir: str | os.PathLike[str] | None = None,
        run_as: str | None = None,
        port: int | None = None,
        tcp: bool = True,
        startup_timeout: float = 30.0,
        extra_conf: Conf | None = None,
    ) -> None:
        if run_as is not None and (not isinstance(run_as, str) or not run_as):
            raise EphemeralPostgresError(f"run_as must be a user name or None, not {run_as!r}")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            raise EphemeralPostgresError(f"port must be 1-65535 or None, not {port!r}")
        if not isinstance(startup_timeout, int | float) or not startup_timeout > 0:
            raise EphemeralPostgresError(f"startup_timeout must be > 0, not {startup_timeout!r}")
        self._explicit_bindir = _optional_path("bindir", bindir)
        self._storage_dir = _optional_path("storage_dir", storage_dir)
        self._wanted_user = run_as
        self._requested_port = port
        self._tcp = tcp
        self._startup_timeout = float(startup_timeout)
        self._extra_conf: dict[str, str | int | float | bool] = dict(extra_conf or {})
        self._bindir: Path | None = None
        self._version: str | None = None
        self._run_as: RunAs | None = None
        self._dir: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid: int | None = None
        self._last_log = ""
        self._startup_seconds: float | None = None

    @classmethod
    def from_env(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        storage_dir: str | os.PathLike[str] | None = None,
        run_as: str | None = None,
        port: int | None = None,
        tcp: bool = True,
        startup_timeout: float = 30.0,
        extra_conf: Conf | None = None,
    ) -> EphemeralPostgres:
        """Build a server configured by the ``PGQRS_PG_*`` environment variables.

        ``bindir``, ``storage_dir`` and ``run_as`` left unset come from
        ``PGQRS_PG_BINDIR``, ``PGQRS_PG_TMPDIR`` and ``PGQRS_PG_USER``.

        Args:
            environ: Where to read the variables (default: ``os.environ``).
            bindir: As for the constructor; wins over ``PGQRS_PG_BINDIR``.
            storage_dir: As for the constructor; wins over ``PGQRS_PG_TMPDIR``.
            run_as: As for the constructor; wins over ``PGQRS_PG_USER``.
            port: As for the constructor.
            tcp: As for the constructor.
            startup_timeout: As for the constructor.
            extra_conf: As for the constructor.

        Returns:
            A server, not started yet.
        """
        env = os.environ if environ is None else environ
        return cls(
            bindir if bindir is not None else (env.get(ENV_BINDIR) or None),
            storage_dir=storage_dir if storage_dir is not None else (env.get(ENV_TMPDIR) or None),
            run_as=run_as if run_as is not None else (env.get(ENV_USER) or None),
            port=port,
            tcp=tcp,
            startup_timeout=startup_timeout,
            extra_conf=extra_conf,
        )

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
            who = pick_user(self._wanted_user)
            root = storage_root(self._storage_dir, who)
            self._bindir = select_bindir(self._explicit_bindir, who, root)
        return self._bindir

    @property
    def version(self) -> str:
        """Server version as reported by ``postgres --version``, e.g. ``"15.18"``."""
        if self._version is None:
            self._version = postgres_version(self.bindir)
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
            return _postmaster.tail(self._dir / "postgres.log", n)
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
        who = pick_user(self._wanted_user)
        root = storage_root(self._storage_dir, who)
        reap_stale(root)
        if self._bindir is None:
            self._bindir = select_bindir(self._explicit_bindir, who, root)
        bindir = self._bindir
        self._run_as = who
        self._owner_pid = os.getpid()

        directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=root))
        self._dir = directory
        self._last_log = ""
        try:
            started = start_time(self._owner_pid)
            (directory / "owner.pid").write_text(
                f"{self._owner_pid} {started}\n" if started else f"{self._owner_pid}\n"
            )
            if who is not None:
                os.chown(directory, who.uid, who.gid)
            _postmaster.initdb(bindir, directory, who)
            self._launch(bindir, directory)
        except BaseException:
            self._cleanup()
            raise
        atexit.register(self._atexit)
        self._startup_seconds = time.monotonic() - began
        return self

    def restart(self, mode: str = "fast", *, downtime: float = 0.0) -> None:
        """Stop the postmaster and start it again on the same data directory and port.

        Every connection is cut; the DSN stays valid, so clients that reconnect reach the
        restarted server. Also brings back a server whose postmaster died.

        Args:
            mode: ``"fast"`` (SIGINT: sessions are ended and a checkpoint is written) or
                ``"immediate"`` (SIGQUIT: no checkpoint, the restart runs crash recovery).
            downtime: Seconds to stay down before starting again.

        Raises:
            EphemeralPostgresError: The server was never started (or was stopped), an
                argument is invalid, or the server did not come back (for instance because
                its port was taken meanwhile).
        """
        proc, directory, port = self._proc, self._dir, self._port
        if directory is None or port is None:  # no proc: an earlier restart failed
            raise EphemeralPostgresError("the server has not been started")
        signum = _RESTART_SIGNALS.get(mode)
        if signum is None:
            raise EphemeralPostgresError(f"mode must be 'fast' or 'immediate', not {mode!r}")
        if not isinstance(downtime, int | float) or not (math.isfinite(downtime)
                                                         and downtime >= 0):
            raise EphemeralPostgresError(f"downtime must be >= 0 seconds, not {downtime!r}")
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                _postmaster.terminate(proc)
        self._proc = None
        time.sleep(downtime)
        self._launch(self.bindir, directory, port=port)  # where the clients expect it

    def stop(self) -> None:
        """Shut the server down and delete its directory; safe to call more than once.

        Sends SIGINT (fast shutdown) and waits up to 10 s, then SIGQUIT (immediate) for
        5 s, then SIGKILL.
        """
        atexit.unregister(self._atexit)
        self._cleanup()

    # -- internals

    def _launch(self, bindir: Path, directory: Path, *, port: int | None = None) -> None:
        fixed = port if port is not None else self._requested_port
        attempts = 1 if fixed is not None else _PORT_ATTEMPTS
        log_path = directory / "postgres.log"
        for attempt in range(1, attempts + 1):
            chosen = fixed or _postmaster.free_port()
            offset = log_path.stat().st_size if log_path.exists() else 0
            proc = _postmaster.spawn(bindir, directory, chosen, tcp=self._tcp,
                                     extra_conf=self._extra_conf, who=self._run_as)
            self._proc = proc
            self._port = chosen
            try:
                ready = _postmaster.wait_ready(proc, directory, self._startup_timeout)
            except TimeoutError:
                raise EphemeralPostgresError(
                    f"PostgreSQL from {bindir} did not become ready within "
                    f"{self._startup_timeout:g} s; postgres.log ends with:\n" + self.log_tail()
                ) from None
            if ready:
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

    def _cleanup(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _postmaster.terminate(proc)
        directory, self._dir = self._dir, None
        if directory is not None:
            self._last_log = _postmaster.tail(directory / "postgres.log", 1000)
            shutil.rmtree(directory, ignore_errors=True)

    def _atexit(self) -> None:
        if self._owner_pid == os.getpid():  # not in a forked child
            self._cleanup()
