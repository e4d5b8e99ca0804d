"""Top-level commands: ``install``, ``verify``, ``demo``, ``stats``, ``reclaim``."""

from __future__ import annotations

import sys

from pgqrs import migrate
from pgqrs.cli._command import Context, Group, arg
from pgqrs.cli._parser import duration
from pgqrs.settings import Settings

group = Group()
"""The commands directly under ``pgqrs``."""


@group.command("install", "install or upgrade the schema (Alembic, idempotent)",
               arg("--sql", action="store_true", help="print the DDL instead of running it"))
async def install(ctx: Context) -> object:
    """``pgqrs install [--sql]``: upgrade the schema to head, or print its DDL."""
    if ctx.args.sql:
        # Offline Alembic renders SQL for the PostgreSQL dialect alone: no DSN is read and no
        # client or engine is built, so this works with no database and with an unusable DSN.
        schema = Settings.build(schema=ctx.args.schema).schema
        sys.stdout.write(migrate.install_sql(schema))
        return None
    async with ctx.admin() as admin:
        await admin.install()
        return {"installed": True, "schema": admin.schema, "revision": await admin.verify()}


@group.command("verify", "check the schema is installed and current")
async def verify(ctx: Context) -> object:
    """``pgqrs verify``: check the schema is installed at this version's head."""
    async with ctx.admin() as admin:
        return {"ok": True, "schema": admin.schema, "revision": await admin.verify()}


@group.command("demo",
               "run a produce/consume demo (starts a throw-away PostgreSQL if no DSN is given)")
async def demo(ctx: Context) -> object:
    """``pgqrs demo``: install → create queue → enqueue 5 → dequeue and archive, narrated."""
    # Imported here: the demo (and the throw-away server behind it) is for this command only.
    from pgqrs import _demo

    await _demo.run(ctx.optional_dsn, schema=ctx.args.schema, out=sys.stdout)
    return None


@group.command("stats", "system-wide counters")
async def stats(ctx: Context) -> object:
    """``pgqrs stats``: queues, workers by status, message counts, schema revision."""
    async with ctx.admin() as admin:
        return await admin.system_stats()


@group.command(
    "reclaim", "stop silent workers and release their messages (zombie reclaim)",
    arg("--queue", help="only this queue (default: all)"),
    arg("--older-than", type=duration, default=None,
        help="heartbeat age, e.g. 30s, 5m (default: 3 heartbeat intervals)"),
)
async def reclaim(ctx: Context) -> object:
    """``pgqrs reclaim``: release the messages of silent workers, per queue."""
    async with ctx.admin() as admin:
        names = ([ctx.args.queue] if ctx.args.queue
                 else [q.queue_name for q in await admin.list_queues()])
        return {n: await admin.reclaim_messages(n, ctx.args.older_than) for n in names}
