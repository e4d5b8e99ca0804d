"""The standalone dashboard server: ``serve()``, and ``pgqrs dashboard`` (``run``, ``main``).

``pgqrs dashboard`` (the CLI, :mod:`pgqrs.cli.dashboard`) parses its options with
:func:`build_parser` and awaits :func:`run`; ``python -m pgqrs.dashboard`` does the same
through :func:`main`. uvicorn is imported only here, when a server is started: an
application that mounts the dashboard runs it on its own ASGI server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from pgqrs import errors
from pgqrs.admin import Admin
from pgqrs.dashboard._app import app, database_label

logger = logging.getLogger("pgqrs.dashboard")

TOKEN_ENV = "PGQRS_DASHBOARD_TOKEN"
BASIC_AUTH_ENV = "PGQRS_DASHBOARD_BASIC_AUTH"
SECRET_ENV = "PGQRS_DASHBOARD_SECRET"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, *, guarded: bool, actions: bool) -> str | None:
    """What to warn about when the dashboard listens beyond this machine unguarded."""
    if _loopback(host) or guarded:
        return None
    return (f"serving on {host} without a token or basic auth: anyone who can reach this "
            f"port can read the queues{' and change them' if actions else ''}")


def serve(
    dsn_or_engine: str | AsyncEngine,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    allow_actions: bool = False,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    schema: str | None = None,
    refresh: int = 5,
    root_path: str = "",
    secret: str | bytes | None = None,
) -> None:
    """Serve the dashboard with uvicorn until SIGINT (Ctrl-C) or SIGTERM (blocks).

    Either signal shuts the server down gracefully, then ``serve`` returns.

    Args:
        dsn_or_engine: a PostgreSQL URL or an ``AsyncEngine``.
        host: interface to bind; loopback by default, so only this machine can connect.
        port: TCP port.
        allow_actions: allow changes (replay, delete, suspend, ...); read-only by default.
        token: require this bearer token (see ``app``).
        basic_auth: require HTTP basic auth with this ``(user, password)``.
        schema: schema of the pgqrs tables.
        refresh: seconds between automatic page refreshes (0: never).
        root_path: the path prefix a reverse proxy serves the dashboard under.
        secret: key signing the dashboard's cookies (random per process by default).

    Raises:
        ConfigurationError: a bad option.
    """
    asyncio.run(_serve(dsn_or_engine, host=host, port=port, allow_actions=allow_actions,
                       token=token, basic_auth=basic_auth, schema=schema, refresh=refresh,
                       root_path=root_path, secret=secret))


async def _serve(dsn_or_engine: str | AsyncEngine, *, host: str, port: int,
                 allow_actions: bool, token: str | None, basic_auth: tuple[str, str] | None,
                 schema: str | None, refresh: int, root_path: str,
                 secret: str | bytes | None) -> None:
    """``serve`` on the running event loop."""
    if not isinstance(host, str) or not host:
        raise errors.ConfigurationError("host must be a non-empty string")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise errors.ConfigurationError("port must be between 1 and 65535")
    application = app(dsn_or_engine, schema=schema, actions=allow_actions, token=token,
                      basic_auth=basic_auth, refresh=refresh, secret=secret)
    warning = exposure_warning(host, guarded=token is not None or basic_auth is not None,
                               actions=allow_actions)
    if warning is not None:
        logger.warning("pgqrs dashboard: %s", warning)
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, without re-raising the stopping signal after shutting down.

        Stopping is the server's normal end (``pgqrs dashboard`` exits 0), not an
        interruption to pass on.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(application, host=host, port=port, root_path=root_path,
                            lifespan="on", server_header=False, log_level="info")
    await Server(config).serve()


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``pgqrs dashboard``."""
    parser = argparse.ArgumentParser(
        prog="pgqrs dashboard",
        description="Serve the pgqrs web dashboard (read-only unless --allow-actions).",
    )
    parser.add_argument("--dsn", help="database URL (else PGQRS_DSN, else DATABASE_URL)")
    parser.add_argument("--schema", help="schema of the pgqrs tables")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument("--allow-actions", action="store_true",
                        help="allow replay, delete, suspend/resume/stop and other changes")
    parser.add_argument("--token", default=None,
                        help=f"require this access token (better: set {TOKEN_ENV})")
    parser.add_argument("--basic-auth", metavar="USER:PASSWORD", default=None,
                        help=f"require HTTP basic auth (better: set {BASIC_AUTH_ENV})")
    parser.add_argument("--refresh", type=int, default=5,
                        help="seconds between page refreshes in the browser, 0 for never")
    parser.add_argument("--root-path", default="",
                        help="path prefix when served behind a reverse proxy (e.g. /pgqrs)")
    return parser


def _basic_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise errors.ConfigurationError("basic auth must be given as USER:PASSWORD")
    return user, password


async def _check(dsn: str, schema: str | None) -> None:
    async with Admin(dsn, schema=schema) as admin:
        await admin.verify()


async def run(options: argparse.Namespace) -> None:
    """What ``pgqrs dashboard`` does with its parsed ``options``, on the running loop.

    Check the database, say where the dashboard listens, then serve until SIGINT or
    SIGTERM. ``options`` are those of :func:`build_parser`; the ``pgqrs`` command line
    fills in its global ``--dsn`` and ``--schema``.

    Raises:
        ConfigurationError: no database given, or a bad option.
        PgqrsError: the database cannot be reached or has no pgqrs schema.
    """
    dsn = options.dsn or os.environ.get("PGQRS_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        raise errors.ConfigurationError(
            "No database given: pass --dsn or set PGQRS_DSN (or DATABASE_URL)")
    token = options.token or os.environ.get(TOKEN_ENV) or None
    basic = _basic_auth(options.basic_auth or os.environ.get(BASIC_AUTH_ENV) or None)
    await _check(dsn, options.schema)
    warning = exposure_warning(options.host, guarded=bool(token or basic),
                               actions=options.allow_actions)
    if warning is not None:
        # Printed, not logged: pgqrs's logger stays silent unless the app configures it.
        print(f"pgqrs dashboard: warning: {warning}", file=sys.stderr)
    mode = "actions allowed" if options.allow_actions else "read-only"
    guard = " ".join(n for n, on in (("token", token), ("basic auth", basic)) if on)
    print(f"pgqrs dashboard: http://{options.host}:{options.port}{options.root_path}/ ({mode}"
          f"{', ' + guard if guard else ''}) on {database_label(dsn)}", file=sys.stderr)
    await _serve(dsn, host=options.host, port=options.port,
                 allow_actions=options.allow_actions, token=token, basic_auth=basic,
                 schema=options.schema, refresh=options.refresh, root_path=options.root_path,
                 secret=os.environ.get(SECRET_ENV) or None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pgqrs.dashboard``: check the database, then serve until stopped.

    Returns:
        The exit code: 0 after a clean shutdown (Ctrl-C or SIGTERM), 1 on an error (one
        line on stderr), 2 on a usage error, 130 when interrupted before serving.
    """
    options = build_parser().parse_args(argv)
    try:
        asyncio.run(run(options))
    except KeyboardInterrupt:
        return 130
    except errors.PgqrsError as exc:
        print(f"pgqrs dashboard: error: {errors.redact(str(exc))}", file=sys.stderr)
        return 1
    return 0
