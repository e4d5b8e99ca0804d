"""``pgqrs queue ...``: create, inspect, change, pause, purge and delete queues.

A queue owns its rules (its policy): the dead-letter threshold, the default lease, the
consume loop's retry backoff, the archive retention and the paused flag. ``create`` and
``update`` take them as flags, ``get`` and ``list`` show them; in table format durations
are written as the flags take them (``30s``, ``5m``, ``forever``), in JSON as seconds
(``null`` retention: forever).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pgqrs.cli._command import Arg, Context, Group, UsageError, arg
from pgqrs.cli._parser import FOREVER, duration, format_duration, retention
from pgqrs.types import QueueInfo

group = Group("queue", "manage queues and their rules")
"""The ``pgqrs queue`` commands."""

_NAME = arg("name")
_OPTIONAL_NAME = arg("name", nargs="?")
# Accepted, ignored and hidden since 0.2.0: the threshold is the queue's (see _deprecated).
_OLD_MAX_READ_CT = arg("--max-read-ct", type=int, default=None, dest="old_max_read_ct",
                       help=argparse.SUPPRESS)

_POLICY: tuple[tuple[str, Arg], ...] = (
    ("max_read_ct", arg("--max-read-ct", type=int, default=None, metavar="N",
                        help="deliveries after which a message is a dead letter")),
    ("visibility_timeout", arg("--visibility-timeout", type=duration, default=None,
                               metavar="DURATION", help="default lease of a claim, e.g. 30s")),
    ("retry_backoff_base", arg("--retry-backoff-base", type=duration, default=None,
                               metavar="DURATION",
                               help="consume loop's first retry delay, e.g. 1s")),
    ("retry_backoff_max", arg("--retry-backoff-max", type=duration, default=None,
                              metavar="DURATION",
                              help="consume loop's longest retry delay, e.g. 5m")),
    ("retention", arg("--retention", type=retention, default=None, metavar="DURATION",
                      help="how long archived rows are kept, e.g. 7d, or 'forever'")),
)
"""The policy flags of ``create`` and ``update``: field name, and its flag."""
_POLICY_FLAGS = tuple(a for _, a in _POLICY)
_DURATIONS = ("visibility_timeout", "retry_backoff_base", "retry_backoff_max", "retention")


def _given(ctx: Context) -> dict[str, Any]:
    """The policy flags given on the command line, as ``Admin`` keywords."""
    values = {field: getattr(ctx.args, field) for field, _ in _POLICY}
    given = {field: value for field, value in values.items() if value is not None}
    if given.get("retention") == FOREVER:
        given["retention"] = None
    return given


def _shown(ctx: Context, info: QueueInfo) -> object:
    """A queue as printed: the ``QueueInfo`` in JSON, durations as flags write them in a table."""
    if ctx.args.format == "json":
        return info
    row: dict[str, Any] = {"id": info.id, "queue_name": info.queue_name,
                           "created_at": info.created_at, "paused": info.paused,
                           "max_read_ct": info.max_read_ct}
    row.update({name: format_duration(getattr(info, name)) for name in _DURATIONS})
    return row


@group.command("create", "create a queue, with its rules (the others from PGQRS_* settings)",
               _NAME, *_POLICY_FLAGS)
async def create_queue(ctx: Context) -> object:
    """``pgqrs queue create NAME [--max-read-ct N] [--visibility-timeout D] ...``."""
    async with ctx.admin() as admin:
        return _shown(ctx, await admin.create_queue(ctx.args.name, **_given(ctx)))


@group.command("update", "change some of a queue's rules (running consumers follow)",
               _NAME, *_POLICY_FLAGS)
async def update_queue(ctx: Context) -> object:
    """``pgqrs queue update NAME [--max-read-ct N] ...``: only the given flags change."""
    changes = _given(ctx)
    if not changes:
        flags = ", ".join(a.flags[0] for _, a in _POLICY)
        raise UsageError(f"nothing to change: give at least one of {flags}")
    async with ctx.admin() as admin:
        return _shown(ctx, await admin.update_queue(ctx.args.name, **changes))


@group.command("pause", "stop consumers claiming from a queue (enqueues go on)", _NAME)
async def pause_queue(ctx: Context) -> object:
    """``pgqrs queue pause NAME``: idempotent."""
    async with ctx.admin() as admin:
        return _shown(ctx, await admin.pause_queue(ctx.args.name))


@group.command("resume", "let consumers claim from a paused queue again", _NAME)
async def resume_queue(ctx: Context) -> object:
    """``pgqrs queue resume NAME``: waiting consumers wake at once."""
    async with ctx.admin() as admin:
        return _shown(ctx, await admin.resume_queue(ctx.args.name))


@group.command("get", "show a queue and its rules", _NAME)
async def get_queue(ctx: Context) -> object:
    """``pgqrs queue get NAME``."""
    async with ctx.admin() as admin:
        return _shown(ctx, await admin.get_queue(ctx.args.name))


@group.command("delete", "delete an idle queue", _NAME)
async def delete_queue(ctx: Context) -> object:
    """``pgqrs queue delete NAME``."""
    async with ctx.admin() as admin:
        await admin.delete_queue(ctx.args.name)
        return {"deleted": ctx.args.name}


@group.command("purge", "delete a queue's messages and archive", _NAME)
async def purge_queue(ctx: Context) -> object:
    """``pgqrs queue purge NAME``."""
    async with ctx.admin() as admin:
        return {"queue": ctx.args.name, "purged": await admin.purge_queue(ctx.args.name)}


@group.command("list", "list queues and their rules")
async def list_queues(ctx: Context) -> object:
    """``pgqrs queue list``."""
    async with ctx.admin() as admin:
        return [_shown(ctx, q) for q in await admin.list_queues()]


def _deprecated(ctx: Context) -> None:
    """Warn about ``--max-read-ct`` on commands that now follow each queue's threshold."""
    if ctx.args.old_max_read_ct is not None:
        print("pgqrs: warning: --max-read-ct is deprecated and ignored: dead letters follow "
              "each queue's own max_read_ct (change it with: pgqrs queue update NAME "
              "--max-read-ct N)", file=sys.stderr)


@group.command("metrics", "message counts (one queue or all)", _OPTIONAL_NAME,
               _OLD_MAX_READ_CT)
async def queue_metrics(ctx: Context) -> object:
    """``pgqrs queue metrics [NAME]``: "dead" by each queue's own threshold."""
    _deprecated(ctx)
    async with ctx.admin() as admin:
        if ctx.args.name:
            return await admin.queue_metrics(ctx.args.name)
        return await admin.all_queues_metrics()


@group.command("archive-dlq", "archive dead letters (one queue or all)",
               _OPTIONAL_NAME, _OLD_MAX_READ_CT)
async def archive_dead_letters(ctx: Context) -> object:
    """``pgqrs queue archive-dlq [NAME]``: by each queue's own threshold."""
    _deprecated(ctx)
    async with ctx.admin() as admin:
        return {"archived_dead_letters": await admin.dlq(ctx.args.name)}
