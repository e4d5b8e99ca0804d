"""Where throw-away servers live: the storage root and the names used inside it.

Each server gets a ``pgqrs-pg-*`` directory (``owner.pid``, ``data/``, ``postgres.log`` and
the Unix socket) in a storage root: the ``storage_dir`` the caller passed, else ``/dev/shm``
when it has room (RAM-backed, so ``initdb`` and ``CREATE DATABASE`` are fast), else the
system temporary directory. Copies of binary bundles (``pgqrs-bin-*``, see ``_binaries``)
are cached there too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._common import EphemeralPostgresError
from ._runas import RunAs, can_traverse

DIR_PREFIX = "pgqrs-pg-"
CACHE_PREFIX = "pgqrs-bin-"
SCRATCH_PREFIX = ".pgqrs-bin-tmp-"
_MAX_SOCKET_PATH = 103  # bytes, macOS limit (104 incl. NUL); Linux allows 107
_MIN_SHM_FREE = 1 << 30


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


def storage_root(explicit: Path | None, who: RunAs | None) -> Path:
    """Choose the directory in which ``pgqrs-pg-*`` server directories are created.

    Args:
        explicit: The caller's ``storage_dir``; checked, never replaced by another.
        who: The account the server will run as (it must reach the root), if we are root.

    Raises:
        EphemeralPostgresError: ``explicit`` is unusable, or no candidate is.
    """
    if explicit is not None:
        root = explicit.absolute()
        if not root.is_dir():
            raise EphemeralPostgresError(f"storage_dir={str(explicit)!r} is not a directory")
        if not _socket_path_fits(root):
            raise EphemeralPostgresError(
                f"storage_dir={str(explicit)!r} is too long for a Unix socket path "
                f"(at most {_MAX_SOCKET_PATH} bytes including '/.s.PGSQL.<port>')"
            )
        if who is not None and not can_traverse(root, who):
            raise EphemeralPostgresError(
                f"user {who.name!r} cannot reach storage_dir={str(explicit)!r} (every "
                "ancestor needs execute permission for it)"
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
        if who is not None and not can_traverse(root, who):
            continue
        return root
    raise EphemeralPostgresError(
        "found no usable temporary directory for PostgreSQL (checked "
        + ", ".join(str(c) for c in candidates)
        + "); pass storage_dir= (or set PGQRS_PG_TMPDIR) a short, writable directory"
    )
