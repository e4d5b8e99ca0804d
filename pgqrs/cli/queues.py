"""``pgqrs queue ...``: create, inspect, purge and delete queues."""

from __future__ import annotations

from pgqrs.cli._command import Context, Group, arg

group = Group("queue", "manage queues")
"""The ``pgqrs queue`` commands."""

_NAME = arg("name")
_OPTIONAL_NAME = arg("name", nargs="?")
_MAX_READ_CT = arg("--max-read-ct", type=int, default=None,
                   help="deliveries after which a message is dead (your consumers' value)")


@group.command("create", "create a queue", _NAME)
async def create_queue(ctx: Context) -> object:
    """``pgqrs queue create NAME``."""
    async with ctx.admin() as admin:
        return await admin.create_queue(ctx.args.name)


@group.command("get", "show a queue", _NAME)
async def get_queue(ctx: Context) -> object:
    """``pgqrs queue get NAME``."""
    async with ctx.admin() as admin:
        return await admin.get_queue(ctx.args.name)


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


@group.command("list", "list queues")
async def list_queues(ctx: Context) -> object:
    """``pgqrs queue list``."""
    async with ctx.admin() as admin:
        return await admin.list_queues()


@group.command("metrics", "message counts (one queue or all)", _OPTIONAL_NAME, _MAX_READ_CT)
async def queue_metrics(ctx: Context) -> object:
    """``pgqrs queue metrics [NAME] [--max-read-ct N]``."""
    async with ctx.admin(max_read_ct=ctx.args.max_read_ct) as admin:
        if ctx.args.name:
            return await admin.queue_metrics(ctx.args.name)
        return await admin.all_queues_metrics()


@group.command("archive-dlq", "archive dead letters (one queue or all)",
               _OPTIONAL_NAME, _MAX_READ_CT)
async def archive_dead_letters(ctx: Context) -> object:
    """``pgqrs queue archive-dlq [NAME] [--max-read-ct N]``."""
    async with ctx.admin(max_read_ct=ctx.args.max_read_ct) as admin:
        return {"archived_dead_letters": await admin.dlq(ctx.args.name)}
