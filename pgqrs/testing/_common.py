"""What every module of the launcher shares: its error type, constants, the child environment.

Like the rest of the launcher (everything in ``pgqrs.testing`` except ``plugin``), this
module imports only the standard library.
"""

from __future__ import annotations

import os
import sys

ENV_BINDIR = "PGQRS_PG_BINDIR"
ENV_TMPDIR = "PGQRS_PG_TMPDIR"
ENV_USER = "PGQRS_PG_USER"

INSTALL_HINT = (
    "install the binaries with `pip install 'pgqrs[embedded]'`, install a system PostgreSQL "
    "package (e.g. `apt install postgresql`, `dnf install postgresql-server`, "
    "`brew install postgresql`), point PGQRS_PG_BINDIR (or `bindir=`) at a directory holding "
    "`initdb` and `postgres`, or use an existing server by passing a DSN (PGQRS_DSN or --dsn)"
)

POLL_INTERVAL = 0.02
"""Seconds between two looks at a file or process we are waiting for."""


class EphemeralPostgresError(RuntimeError):
    """Raised when a throw-away PostgreSQL cannot be found, started or reached."""


def is_linux() -> bool:
    """Tell whether ``/proc`` and ``prctl`` can be expected."""
    return sys.platform.startswith("linux")


def child_env() -> dict[str, str]:
    """Environment for initdb/postgres: no ``PG*`` variables, C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env
