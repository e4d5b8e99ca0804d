"""``python -m pgqrs.testing``: run a throw-away PostgreSQL until interrupted.

Prints the server's DSN on stdout (one line, for scripts) and a description on stderr, then
waits for SIGINT, SIGTERM or SIGHUP and removes the server. Handy to poke at what the tests
see with ``psql``. ``PGQRS_PG_BINDIR``, ``PGQRS_PG_TMPDIR`` and ``PGQRS_PG_USER`` supply the
defaults of ``--bindir``, ``--storage-dir`` and ``--run-as``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from .server import EphemeralPostgres, EphemeralPostgresError


class _Interrupted(Exception):
    """Raised by the signal handlers of :func:`main`."""


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
        prog="python -m pgqrs.testing",
        description="Run a throw-away PostgreSQL until interrupted; prints its DSN.",
    )
    parser.add_argument("--bindir", help="directory holding initdb and postgres "
                                         "(default: PGQRS_PG_BINDIR, else discovery)")
    parser.add_argument("--storage-dir", help="where the server directory is created "
                                              "(default: PGQRS_PG_TMPDIR, else /dev/shm or "
                                              "the system temporary directory)")
    parser.add_argument("--run-as", help="user to run PostgreSQL as when root (default: "
                                         "PGQRS_PG_USER, else postgres, else nobody)")
    parser.add_argument("--port", type=int, help="TCP port (default: a free one)")
    parser.add_argument(
        "--socket-only", action="store_true", help="no TCP; connect through the Unix socket"
    )
    parser.add_argument("--driver", help="SQLAlchemy driver for the printed URL, e.g. asyncpg")
    args = parser.parse_args(argv)

    # A script started with `&` inherits SIGINT as ignored, so install handlers explicitly.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    try:
        server = EphemeralPostgres.from_env(
            bindir=args.bindir, storage_dir=args.storage_dir, run_as=args.run_as,
            port=args.port, tcp=not args.socket_only,
        )
    except EphemeralPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
