"""``pgqrs dashboard``: serve the web dashboard (needs ``pgqrs[dashboard]``).

The options are the dashboard's own (:func:`pgqrs.dashboard.build_parser`, which
``python -m pgqrs.dashboard`` parses): they are declared here again because the dashboard
package needs its extra to import, and ``pgqrs --help`` must work without it. Their
defaults stay the dashboard's: what is not given here is left to its parser, and a test
checks that both declare the same options. The global ``--dsn`` and ``--schema`` apply.
"""

from __future__ import annotations

import argparse

from pgqrs import errors
from pgqrs.cli._command import Context, Group, arg

group = Group()
"""``pgqrs dashboard``, a top-level command."""

_UNSET = argparse.SUPPRESS  # absent from the namespace: the dashboard's default applies

OPTIONS = (
    arg("--host", default=_UNSET,
        help="interface to bind (default 127.0.0.1: this machine only)"),
    arg("--port", type=int, default=_UNSET, help="TCP port (default 8080)"),
    arg("--allow-actions", action="store_true", default=_UNSET,
        help="allow replay, delete, suspend/resume/stop, pause/resume and other changes"),
    arg("--token", default=_UNSET,
        help="require this access token (better: set PGQRS_DASHBOARD_TOKEN)"),
    arg("--basic-auth", metavar="USER:PASSWORD", default=_UNSET,
        help="require HTTP basic auth (better: set PGQRS_DASHBOARD_BASIC_AUTH)"),
    arg("--refresh", type=int, default=_UNSET,
        help="seconds between page refreshes in the browser, 0 for never (default 5)"),
    arg("--root-path", default=_UNSET,
        help="path prefix when served behind a reverse proxy (e.g. /pgqrs)"),
)
"""The dashboard's options, as ``pgqrs dashboard`` takes them."""


@group.command("dashboard",
               "serve the web dashboard until stopped (read-only unless --allow-actions)",
               *OPTIONS)
async def dashboard(ctx: Context) -> object:
    """``pgqrs dashboard [--host H] [--port N] [--allow-actions] ...``.

    Ctrl-C or SIGTERM stops it gracefully (exit 0).
    """
    # Imported here: the extra is optional, and every other command works without it.
    try:
        from pgqrs import dashboard as web
    except ImportError as exc:
        raise errors.ConfigurationError(str(exc)) from None
    options = web.build_parser().parse_args([])  # the dashboard's defaults
    for name in ("host", "port", "allow_actions", "token", "basic_auth", "refresh",
                 "root_path"):
        if hasattr(ctx.args, name):
            setattr(options, name, getattr(ctx.args, name))
    options.dsn, options.schema = ctx.dsn, ctx.args.schema
    await web.run(options)
    return None
