"""``pgqrs message ...``: enqueue (one or a file of them), dequeue, inspect, override.

``message get`` and ``message dequeue`` show every field of a message, its options
(priority, headers, dedup key, group) included.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any, TextIO

from pgqrs import errors
from pgqrs.cli._command import Context, Group, arg
from pgqrs.cli._output import Progress
from pgqrs.cli._parser import duration
from pgqrs.consumer import Consumer
from pgqrs.producer import Producer

group = Group("message", "work with messages")
"""The ``pgqrs message`` commands."""

BATCH = 500
"""Messages per ``enqueue_batch`` call when enqueueing from a file."""

_ID = arg("id", type=int)


def _cli_identity() -> tuple[str, int]:
    """The short-lived worker the CLI registers: ``pgqrs-cli@<host>``, port from the pid."""
    return f"pgqrs-cli@{socket.gethostname()}"[:255], os.getpid() % 65536


def _json_object(text: str) -> dict[str, Any]:
    # Bad JSON is an operational error (exit 1, like a rejected payload), not a usage error,
    # so it is checked here rather than as an argparse type.
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.ValidationError(f"Payload is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise errors.ValidationError("Payload must be a JSON object ({...})")
    return value


def _header(text: str) -> tuple[str, str]:
    """Parse ``--header name=value`` (argparse type)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"invalid header {text!r} (use name=value)")
    return name, value


@group.command(
    "enqueue", "enqueue a JSON object (or many with --file)",
    arg("queue"),
    arg("payload", nargs="?", help="a JSON object"),
    arg("--delay", type=duration, default=None, help="invisible for this long"),
    arg("--priority", type=int, default=0, help="higher is claimed first (default 0)"),
    arg("--dedup-key", default=None,
        help="while a message with this key is live, print its id and enqueue nothing"),
    arg("--header", type=_header, action="append", default=[], metavar="NAME=VALUE",
        help="a header (repeat for more)"),
    arg("--group", default=None, help="ordered group: delivered in order, one at a time"),
    arg("--file", help="file with one JSON object per line ('-' for stdin)"),
)
async def enqueue(ctx: Context) -> object:
    """``pgqrs message enqueue QUEUE ['JSON' | --file PATH] [options]``.

    Options: ``--delay D``, ``--priority N``, ``--dedup-key K``, ``--header NAME=VALUE``
    (repeatable), ``--group G``. With ``--file`` every line gets the same options (a
    dedup key would make all lines one message, so it is refused there).
    """
    args = ctx.args
    hostname, port = _cli_identity()
    headers = dict(args.header) or None
    options: dict[str, Any] = {"delay": args.delay, "priority": args.priority,
                               "headers": headers, "group": args.group}
    async with Producer(ctx.dsn, args.queue, hostname, port, schema=args.schema) as producer:
        if args.file is None:
            if args.payload is None:
                raise errors.ValidationError("Give a JSON payload or --file")
            return {"id": await producer.enqueue(_json_object(args.payload),
                                                 dedup_key=args.dedup_key, **options)}
        if args.dedup_key is not None:
            raise errors.ValidationError("--dedup-key names one message; it cannot be "
                                         "given with --file")
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        try:
            ids = await _enqueue_lines(producer, stream, options,
                                       Progress("enqueued {} messages", quiet=args.quiet))
        finally:
            if stream is not sys.stdin:
                stream.close()
        return {"count": len(ids), "first_id": ids[0] if ids else None,
                "last_id": ids[-1] if ids else None}


async def _enqueue_lines(producer: Producer, stream: TextIO, options: dict[str, Any],
                         progress: Progress) -> list[int]:
    """Enqueue one JSON object per non-blank line, in batches of :data:`BATCH`."""
    ids: list[int] = []
    try:
        batch: list[dict[str, Any]] = []
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                batch.append(_json_object(line))
            except errors.ValidationError as exc:
                raise errors.ValidationError(f"line {number}: {exc}") from None
            if len(batch) >= BATCH:
                ids += await producer.enqueue_batch(batch, **options)
                batch = []
                progress.update(len(ids))
        if batch:
            ids += await producer.enqueue_batch(batch, **options)
    finally:
        # Also on error: the operator sees how far it got before the message.
        progress.finish(len(ids))
    return ids


@group.command(
    "dequeue", "claim messages (the lease is kept)",
    arg("queue"),
    arg("--limit", type=int, default=1),
    arg("--vt", type=duration, default=None,
        help="lease length (default: the queue's visibility timeout)"),
)
async def dequeue(ctx: Context) -> object:
    """``pgqrs message dequeue QUEUE [--limit N] [--vt DURATION]``."""
    hostname, port = _cli_identity()
    consumer = Consumer(ctx.dsn, ctx.args.queue, hostname, port, schema=ctx.args.schema,
                        visibility_timeout=ctx.args.vt)
    try:
        return await consumer.dequeue(ctx.args.limit)
    finally:
        # The operator asked for a lease: keep it, let it run out (or be archived).
        await consumer.close(release_held=False)


@group.command("archive", "archive a message (operator override)", _ID)
async def archive_message(ctx: Context) -> object:
    """``pgqrs message archive ID``: archive it whoever holds it."""
    async with ctx.admin() as admin:
        messages = await admin.get_messages()
        return {"id": ctx.args.id, "archived": await messages.archive(ctx.args.id)}


@group.command("delete", "delete a message (operator override)", _ID)
async def delete_message(ctx: Context) -> object:
    """``pgqrs message delete ID``: delete it whoever holds it."""
    async with ctx.admin() as admin:
        messages = await admin.get_messages()
        return {"id": ctx.args.id, "deleted": await messages.delete(ctx.args.id)}


@group.command("get", "show a live message", _ID)
async def get_message(ctx: Context) -> object:
    """``pgqrs message get ID``."""
    async with ctx.admin() as admin:
        found = await (await admin.get_messages()).get(ctx.args.id)
        if found is None:
            raise errors.PgqrsError(f"Message {ctx.args.id} is not in the live queue")
        return found


@group.command("count", "count live messages", arg("queue", nargs="?"))
async def count_messages(ctx: Context) -> object:
    """``pgqrs message count [QUEUE]``."""
    async with ctx.admin() as admin:
        return {"count": await (await admin.get_messages()).count(ctx.args.queue)}
