"""``pgqrs archive ...``: list, count and delete archived messages; replay dead letters.

``archive list`` shows every field of an archived message, its options (priority,
headers, dedup key, group) included.
"""

from __future__ import annotations

from pgqrs import errors
from pgqrs.cli._command import Context, Group, arg

group = Group("archive", "inspect the archive and dead letters")
"""The ``pgqrs archive`` commands."""

_QUEUE = arg("--queue")
_DEAD = arg("--dead", action="store_true", help="dead letters only")


@group.command("list", "list archived messages",
               _QUEUE, _DEAD, arg("--limit", type=int, default=100))
async def list_archived(ctx: Context) -> object:
    """``pgqrs archive list [--queue Q] [--dead] [--limit N]``: oldest first."""
    async with ctx.admin() as admin:
        archive = await admin.get_archive()
        return await archive.list(ctx.args.limit, queue=ctx.args.queue,
                                  dead=True if ctx.args.dead else None)


@group.command("count", "count archived messages", _QUEUE, _DEAD)
async def count_archived(ctx: Context) -> object:
    """``pgqrs archive count [--queue Q] [--dead]``."""
    async with ctx.admin() as admin:
        archive = await admin.get_archive()
        return {"count": await archive.count(ctx.args.queue,
                                             dead=True if ctx.args.dead else None)}


@group.command("delete", "delete an archive row", arg("id", type=int))
async def delete_archived(ctx: Context) -> object:
    """``pgqrs archive delete ID``."""
    async with ctx.admin() as admin:
        archive = await admin.get_archive()
        return {"id": ctx.args.id, "deleted": await archive.delete(ctx.args.id)}


@group.command("replay", "put a dead letter back on its queue", arg("id", type=int))
async def replay_dead_letter(ctx: Context) -> object:
    """``pgqrs archive replay ID``: a dead letter becomes a new message; prints its id."""
    async with ctx.admin() as admin:
        new_id = await admin.replay_dlq(ctx.args.id)
        if new_id is None:
            raise errors.PgqrsError(f"Archive row {ctx.args.id} is not a dead letter")
        return {"archive_id": ctx.args.id, "message_id": new_id}
