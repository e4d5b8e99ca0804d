"""``pgqrs metrics serve``: a Prometheus exporter of the queue state (needs pgqrs[prometheus])."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from pgqrs import errors
from pgqrs.cli._command import Context, Group, arg

group = Group("metrics", "Prometheus metrics (needs pgqrs[prometheus])")
"""The ``pgqrs metrics ...`` commands."""


@group.command(
    "serve", "serve the queues' state to Prometheus over HTTP until stopped",
    arg("--port", type=int, default=9464, help="TCP port (default 9464; 0: any free port)"),
    arg("--host", default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"),
    # Accepted, ignored and hidden since 0.2.0: "dead" follows each queue's own threshold,
    # and an exporter's command line lives in service files that must not break on upgrade.
    arg("--max-read-ct", type=int, default=None, help=argparse.SUPPRESS),
    arg("--archive-exact-limit", type=int, default=100_000,
        help="archived rows per queue counted exactly; above, the planner's estimate"),
)
async def serve(ctx: Context) -> object:
    """``pgqrs metrics serve [--port N] [--host H]``: run the exporter until SIGINT/SIGTERM."""
    # Imported here: the extra is optional, and every other command works without it.
    try:
        from pgqrs import prometheus
    except ImportError as exc:
        raise errors.ConfigurationError(str(exc)) from None
    args = ctx.args
    if args.max_read_ct is not None:
        print("pgqrs: warning: --max-read-ct is deprecated and ignored: dead letters are "
              "counted by each queue's own max_read_ct", file=sys.stderr, flush=True)
    exporter = prometheus.serve(ctx.dsn, port=args.port, host=args.host, schema=args.schema,
                                archive_exact_limit=args.archive_exact_limit)
    try:
        # One read up front, so a wrong DSN or a missing schema shows at once; the exporter
        # keeps serving (pgqrs_up 0) so it recovers by itself when the database does.
        first = await exporter.collector.scrape()
        if first.snapshot is None:
            print(f"pgqrs: warning: cannot read the queue state yet ({first.error}); "
                  "serving pgqrs_up 0 until it can", file=sys.stderr, flush=True)
        _log_to_stderr()  # later failed scrapes (after this first one, said above)
        if not args.quiet:
            print(f"pgqrs: serving metrics on {exporter.url} (Ctrl-C to stop)", flush=True)
        await _until_signalled()
    finally:
        await asyncio.to_thread(exporter.stop)
        await exporter.collector.close()
    return None


def _log_to_stderr() -> None:
    """A long-running exporter reports failed scrapes on stderr (pgqrs logs them)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("pgqrs")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
