"""``pgqrs maintain``: run the maintenance routine in the foreground until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys

from pgqrs.cli._command import Context, Group, arg
from pgqrs.cli._parser import duration
from pgqrs.maintenance import DEFAULT_INTERVAL, DEFAULT_PURGE_WORKERS_AFTER, Maintenance

group = Group()
"""The ``pgqrs maintain`` command (top level)."""


@group.command(
    "maintain", "run maintenance (retention, dead letters, zombie reclaim, old workers, "
    "schedules) until SIGTERM/Ctrl-C; one runner acts at a time",
    arg("--interval", type=duration, default=DEFAULT_INTERVAL,
        help="time between rounds (default 60s); schedule ticks are enqueued when due"),
    arg("--lease", type=duration, default=None,
        help="how soon another runner takes over from one that died (default: 3/4 of "
             "--interval, at most 30s)"),
    arg("--batch-size", type=int, default=1000, help="archived rows per purge transaction"),
    arg("--purge-workers-after", type=duration, default=DEFAULT_PURGE_WORKERS_AFTER,
        help="delete stopped workers silent for this long (default 7d)"),
    arg("--once", action="store_true",
        help="run one round if no other runner leads, print its counts and exit"),
)
async def maintain(ctx: Context) -> object:
    """``pgqrs maintain [--interval 60s] [--once]``: the runner in the foreground."""
    args = ctx.args
    if not args.quiet:
        _log_to_stderr()
    async with Maintenance(ctx.dsn, schema=args.schema, interval=args.interval,
                           lease=args.lease, batch_size=args.batch_size,
                           purge_workers_after=args.purge_workers_after) as runner:
        if args.once:
            report = await runner.run_once()
            if report is None:
                return {"ran": False, "reason": "another runner holds the lease"}
            return {"ran": True, **dataclasses.asdict(report)}
        await runner.run(_stop_on_signals())
    return None


def _log_to_stderr() -> None:
    """Every action of the runner, with its counts, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in ("pgqrs.maintenance", "pgqrs"):
        logger = logging.getLogger(name)
        if name == "pgqrs.maintenance":
            logger.setLevel(logging.INFO)
        else:
            logger.setLevel(logging.WARNING)
    logging.getLogger("pgqrs").addHandler(handler)


def _stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (the round in progress finishes)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    return stop
