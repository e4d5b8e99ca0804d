"""``pgqrs archive ...``: list, count, delete and purge archived messages; replay dead letters.

``archive list`` shows every field of an archived message, its options (priority,
headers, dedup key, group) included.
"""

from __future__ import annotations

from pgqrs import errors
from pgqrs.cli._command import Context, Group, arg
from pgqrs.cli._output import Progress
from pgqrs.cli._parser import duration

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


@group.command(
    "purge", "delete archived rows by age, in short batches (retention)",
    arg("--older-than", type=duration, default=None,
        help="age, e.g. 7d (default: each queue's retention; queues without one are kept)"),
    arg("--queue", help="only this queue (default: all)"),
    arg("--keep-dead", action="store_true", help="keep dead letters"),
    arg("--batch-size", type=int, default=1000, help="rows per transaction (default 1000)"),
    arg("--dry-run", action="store_true", help="only count what would be deleted"),
)
async def purge_archived(ctx: Context) -> object:
    """``pgqrs archive purge [--older-than 7d] [--queue Q] [--dry-run]``: retention by hand."""
    args = ctx.args
    async with ctx.admin() as admin:
        if args.dry_run:
            count = await admin.purge_archive(queue=args.queue, older_than=args.older_than,
                                              dead_letters=not args.keep_dead,
                                              batch_size=args.batch_size, dry_run=True)
            return {"would_purge": count}
        progress = Progress("purged {} archived rows", quiet=args.quiet)
        total = 0

        def advance(count: int) -> None:
            nonlocal total
            total = count
            progress.update(count)

        try:
            total = await admin.purge_archive(
                queue=args.queue, older_than=args.older_than, dead_letters=not args.keep_dead,
                batch_size=args.batch_size, on_batch=advance)
        finally:
            # Also when interrupted: what was purged stays purged; say how much.
            progress.finish(total)
        return {"purged": total}
