"""The ``pgqrs`` command line: install the schema and operate queues, messages, workers.

Built on the public API only. Exit codes: 0 success, 1 operational error (one line on
stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import json
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from pgqrs import errors
from pgqrs.admin import Admin
from pgqrs.consumer import Consumer
from pgqrs.producer import Producer
from pgqrs.types import WorkerStatus

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_BATCH = 500


def duration(text: str) -> float:
    """Parse ``30``, ``30s``, ``5m``, ``2h`` or ``7d`` into seconds (argparse type)."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 30s, 5m, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.ValidationError(f"Payload is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise errors.ValidationError("Payload must be a JSON object ({...})")
    return value


# -- output ---------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))[:60]
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render(value: Any, fmt: str, out: TextIO = sys.stdout) -> None:
    """Print ``value`` as JSON (one document) or as an aligned table for people."""
    data = _plain(value)
    if fmt == "json":
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
        return
    if isinstance(data, list):
        if not data:
            out.write("(none)\n")
            return
        if not isinstance(data[0], dict):
            out.write("\n".join(_cell(v) for v in data) + "\n")
            return
        columns = list(data[0])
        rows = [[_cell(r.get(c)) for c in columns] for r in data]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
                  + "\n")
        for row in rows:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                      + "\n")
        return
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key, item in data.items():
            out.write(f"{key.ljust(width)}  {_cell(item)}\n")
        return
    out.write(f"{_cell(data)}\n")


# -- commands -------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, str], Awaitable[Any]]


def _cli_identity() -> tuple[str, int]:
    return f"pgqrs-cli@{socket.gethostname()}"[:255], os.getpid() % 65536


async def _with_admin(args: argparse.Namespace, dsn: str,
                      action: Callable[[Admin], Awaitable[Any]]) -> Any:
    max_read_ct = getattr(args, "max_read_ct", None) or 5
    async with Admin(dsn, schema=args.schema, max_read_ct=max_read_ct) as admin:
        return await action(admin)


async def _cmd_install(args: argparse.Namespace, dsn: str) -> Any:
    admin = Admin(dsn, schema=args.schema)
    if args.sql:
        sys.stdout.write(admin.install_sql())
        return None
    async with admin:
        await admin.install()
        return {"installed": True, "schema": admin.schema, "revision": await admin.verify()}


async def _cmd_verify(args: argparse.Namespace, dsn: str) -> Any:
    async def run(admin: Admin) -> Any:
        return {"ok": True, "schema": admin.schema, "revision": await admin.verify()}
    return await _with_admin(args, dsn, run)


async def _cmd_stats(args: argparse.Namespace, dsn: str) -> Any:
    return await _with_admin(args, dsn, lambda a: a.system_stats())


async def _cmd_reclaim(args: argparse.Namespace, dsn: str) -> Any:
    async def run(admin: Admin) -> Any:
        names = [args.queue] if args.queue else [q.queue_name for q in await admin.list_queues()]
        return {n: await admin.reclaim_messages(n, args.older_than) for n in names}
    return await _with_admin(args, dsn, run)


async def _cmd_queue(args: argparse.Namespace, dsn: str) -> Any:
    async def run(admin: Admin) -> Any:
        action: str = args.action
        name: Any = getattr(args, "name", None)
        if action == "create":
            return await admin.create_queue(name)
        if action == "list":
            return await admin.list_queues()
        if action == "get":
            return await admin.get_queue(name)
        if action == "delete":
            await admin.delete_queue(name)
            return {"deleted": name}
        if action == "purge":
            return {"queue": name, "purged": await admin.purge_queue(name)}
        if action == "metrics":
            return (await admin.queue_metrics(name) if name
                    else await admin.all_queues_metrics())
        return {"archived_dead_letters": await admin.dlq(name)}  # archive-dlq
    return await _with_admin(args, dsn, run)


async def _cmd_message(args: argparse.Namespace, dsn: str) -> Any:
    action = args.action
    if action == "enqueue":
        return await _enqueue(args, dsn)
    if action == "dequeue":
        hostname, port = _cli_identity()
        consumer = Consumer(dsn, args.queue, hostname, port, schema=args.schema,
                            visibility_timeout=args.vt or 30)
        try:
            return await consumer.dequeue(args.limit)
        finally:
            # The operator asked for a lease: keep it, let it run out (or be archived).
            await consumer.close(release_held=False)

    async def run(admin: Admin) -> Any:
        messages = await admin.get_messages()
        if action == "get":
            found = await messages.get(args.id)
            if found is None:
                raise errors.PgqrsError(f"Message {args.id} is not in the live queue")
            return found
        if action == "count":
            return {"count": await messages.count(args.queue)}
        if action == "archive":
            return {"id": args.id, "archived": await messages.archive(args.id)}
        return {"id": args.id, "deleted": await messages.delete(args.id)}
    return await _with_admin(args, dsn, run)


async def _enqueue(args: argparse.Namespace, dsn: str) -> Any:
    hostname, port = _cli_identity()
    async with Producer(dsn, args.queue, hostname, port, schema=args.schema) as producer:
        if args.file is None:
            if args.payload is None:
                raise errors.ValidationError("Give a JSON payload or --file")
            return {"id": await producer.enqueue(_json_object(args.payload), delay=args.delay)}
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        ids: list[int] = []
        show = sys.stderr.isatty() and not args.quiet
        try:
            batch: list[dict[str, Any]] = []
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    batch.append(_json_object(line))
                except errors.ValidationError as exc:
                    raise errors.ValidationError(f"line {number}: {exc}") from None
                if len(batch) >= _BATCH:
                    ids += await producer.enqueue_batch(batch, delay=args.delay)
                    batch = []
                    if show:
                        sys.stderr.write(f"\renqueued {len(ids)} messages")
            if batch:
                ids += await producer.enqueue_batch(batch, delay=args.delay)
        finally:
            if stream is not sys.stdin:
                stream.close()
            if show:
                sys.stderr.write(f"\renqueued {len(ids)} messages\n")
        return {"count": len(ids), "first_id": ids[0] if ids else None,
                "last_id": ids[-1] if ids else None}


async def _cmd_worker(args: argparse.Namespace, dsn: str) -> Any:
    async def run(admin: Admin) -> Any:
        action = args.action
        if action == "list":
            return await (await admin.get_workers()).list(queue=args.queue)
        if action == "get":
            return await admin.get_worker(args.id)
        stale = getattr(args, "stale_after", None) or admin.settings.stale_threshold
        if action == "stats":
            return await admin.worker_health_stats(stale, group_by_queue=True)
        if action == "health":
            return await admin.worker_health_stats(stale)
        if action in ("suspend", "resume", "stop"):
            status = {"suspend": WorkerStatus.SUSPENDED, "resume": WorkerStatus.READY,
                      "stop": WorkerStatus.STOPPED}[action]
            await admin.set_worker_status(args.id, status)
            return await admin.get_worker(args.id)
        if action == "messages":
            return await admin.get_worker_messages(args.id)
        if action == "release":
            return {"id": args.id, "released": await admin.release_worker_messages(args.id)}
        if action == "delete":
            await admin.delete_worker(args.id)
            return {"deleted": args.id}
        return {"purged": await admin.purge_old_workers(args.older_than)}  # purge
    return await _with_admin(args, dsn, run)


async def _cmd_archive(args: argparse.Namespace, dsn: str) -> Any:
    async def run(admin: Admin) -> Any:
        archive = await admin.get_archive()
        action = args.action
        if action == "list":
            return await archive.list(args.limit, queue=args.queue,
                                      dead=True if args.dead else None)
        if action == "count":
            return {"count": await archive.count(args.queue, dead=True if args.dead else None)}
        if action == "delete":
            return {"id": args.id, "deleted": await archive.delete(args.id)}
        new_id = await admin.replay_dlq(args.id)  # replay
        if new_id is None:
            raise errors.PgqrsError(f"Archive row {args.id} is not a dead letter")
        return {"archive_id": args.id, "message_id": new_id}
    return await _with_admin(args, dsn, run)


async def _cmd_demo(args: argparse.Namespace, dsn: str | None) -> Any:
    """Run install → create queue → enqueue 5 → dequeue and archive, narrated."""
    from pgqrs import _demo

    await _demo.run(dsn, schema=args.schema, out=sys.stdout)
    return None


# -- parser ---------------------------------------------------------------------------------


_GLOBAL_DEFAULTS: dict[str, Any] = {
    "dsn": None, "schema": None, "format": "table", "quiet": False, "verbose": False,
}


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a subcommand's absent option from overwriting the top-level one, so
    # global options work before or after the subcommand.
    s = argparse.SUPPRESS
    common.add_argument("--dsn", default=s,
                        help="database URL (else PGQRS_DSN, else DATABASE_URL)")
    common.add_argument("--schema", default=s, help="schema of the pgqrs tables")
    common.add_argument("--format", choices=("table", "json"), default=s, help="output format")
    common.add_argument("-q", "--quiet", action="store_true", default=s, help="less output")
    common.add_argument("-v", "--verbose", action="store_true", default=s,
                        help="show tracebacks on errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full argparse tree of ``pgqrs``."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="pgqrs", parents=[common],
        description="pgqrs: a durable message queue in PostgreSQL. Operate it from here.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent: Any, name: str, handler: Handler | None, help_text: str,
            ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help_text,
                                                       description=help_text)
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    p = add(sub, "install", _cmd_install, "install or upgrade the schema (Alembic, idempotent)")
    p.add_argument("--sql", action="store_true", help="print the DDL instead of running it")
    add(sub, "verify", _cmd_verify, "check the schema is installed and current")
    add(sub, "demo", _cmd_demo,
        "run a produce/consume demo (starts a throw-away PostgreSQL if no DSN is given)")
    add(sub, "stats", _cmd_stats, "system-wide counters")
    p = add(sub, "reclaim", _cmd_reclaim,
            "stop silent workers and release their messages (zombie reclaim)")
    p.add_argument("--queue", help="only this queue (default: all)")
    p.add_argument("--older-than", type=duration, default=None,
                   help="heartbeat age, e.g. 30s, 5m (default: 3 heartbeat intervals)")

    queue = add(sub, "queue", None, "manage queues").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    for name, text in (("create", "create a queue"), ("get", "show a queue"),
                       ("delete", "delete an idle queue"),
                       ("purge", "delete a queue's messages and archive")):
        add(queue, name, _cmd_queue, text).add_argument("name")
    add(queue, "list", _cmd_queue, "list queues")
    for name, text in (("metrics", "message counts (one queue or all)"),
                       ("archive-dlq", "archive dead letters (one queue or all)")):
        p = add(queue, name, _cmd_queue, text)
        p.add_argument("name", nargs="?")
        p.add_argument("--max-read-ct", type=int, default=5,
                       help="deliveries after which a message is dead (your consumers' value)")

    message = add(sub, "message", None, "work with messages").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = add(message, "enqueue", _cmd_message, "enqueue a JSON object (or many with --file)")
    p.add_argument("queue")
    p.add_argument("payload", nargs="?", help="a JSON object")
    p.add_argument("--delay", type=duration, default=None, help="invisible for this long")
    p.add_argument("--file", help="file with one JSON object per line ('-' for stdin)")
    p = add(message, "dequeue", _cmd_message, "claim messages (the lease is kept)")
    p.add_argument("queue")
    p.add_argument("--limit", type=int, default=1)
    p.add_argument("--vt", type=duration, default=None, help="lease length (default 30s)")
    for name, text in (("archive", "archive a message (operator override)"),
                       ("delete", "delete a message (operator override)"),
                       ("get", "show a live message")):
        add(message, name, _cmd_message, text).add_argument("id", type=int)
    add(message, "count", _cmd_message, "count live messages").add_argument("queue", nargs="?")

    worker = add(sub, "worker", None, "inspect and control workers").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add(worker, "list", _cmd_worker, "list workers").add_argument("--queue")
    for name, text in (("get", "show a worker"), ("suspend", "suspend a ready worker"),
                       ("resume", "resume a suspended worker"),
                       ("stop", "stop a worker and release its messages"),
                       ("messages", "messages a worker holds"),
                       ("release", "release a worker's messages"),
                       ("delete", "delete a stopped worker")):
        add(worker, name, _cmd_worker, text).add_argument("id", type=int)
    for name, text in (("stats", "worker counts per queue"), ("health", "worker counts")):
        add(worker, name, _cmd_worker, text).add_argument(
            "--stale-after", type=duration, default=None,
            help="silence that counts as stale (default: 3 heartbeat intervals)")
    add(worker, "purge", _cmd_worker, "delete old stopped workers").add_argument(
        "--older-than", type=duration, default=7 * 86400.0)

    archive = add(sub, "archive", None, "inspect the archive and dead letters").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = add(archive, "list", _cmd_archive, "list archived messages")
    p.add_argument("--queue")
    p.add_argument("--dead", action="store_true", help="dead letters only")
    p.add_argument("--limit", type=int, default=100)
    p = add(archive, "count", _cmd_archive, "count archived messages")
    p.add_argument("--queue")
    p.add_argument("--dead", action="store_true", help="dead letters only")
    add(archive, "delete", _cmd_archive, "delete an archive row").add_argument("id", type=int)
    add(archive, "replay", _cmd_archive, "put a dead letter back on its queue").add_argument(
        "id", type=int)
    return parser


def _resolve_dsn(args: argparse.Namespace) -> str | None:
    return args.dsn or os.environ.get("PGQRS_DSN") or os.environ.get("DATABASE_URL")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgqrs`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Not parser.set_defaults(): the shared parent actions would carry those defaults into
    # every subcommand and overwrite options given before the subcommand.
    for name, default in _GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    dsn = _resolve_dsn(args)
    try:
        if args.command == "install" and args.sql:
            result = asyncio.run(_cmd_install(args, dsn or "postgresql://"))
        elif args.command == "demo":
            result = asyncio.run(_cmd_demo(args, dsn))
        else:
            if not dsn:
                raise errors.ConfigurationError(
                    "No database given: pass --dsn or set PGQRS_DSN (or DATABASE_URL)"
                )
            result = asyncio.run(args.handler(args, dsn))
    except KeyboardInterrupt:
        print("pgqrs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()
    except Exception as exc:
        if args.verbose:
            import traceback

            traceback.print_exc()
        message = errors.redact(str(exc)) if isinstance(exc, errors.PgqrsError) else (
            f"unexpected {type(exc).__name__}: {errors.redact(str(exc))}")
        print(f"pgqrs: error: {message}", file=sys.stderr)
        return 1
    if result is not None and not (args.quiet and args.format == "table"):
        try:
            render(result, args.format)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. `pgqrs ... | head`
            return _closed_pipe()
    return 0


def _closed_pipe() -> int:
    # Point stdout at devnull so the interpreter's final flush does not fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
