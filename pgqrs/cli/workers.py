"""``pgqrs worker ...``: inspect workers, change their status, release and purge them."""

from __future__ import annotations

from pgqrs.cli._command import Context, Group, arg
from pgqrs.cli._parser import duration
from pgqrs.types import WorkerStatus

group = Group("worker", "inspect and control workers")
"""The ``pgqrs worker`` commands."""

_ID = arg("id", type=int)
_STALE_AFTER = arg("--stale-after", type=duration, default=None,
                   help="silence that counts as stale (default: 3 heartbeat intervals)")


@group.command("list", "list workers", arg("--queue"))
async def list_workers(ctx: Context) -> object:
    """``pgqrs worker list [--queue Q]``."""
    async with ctx.admin() as admin:
        return await (await admin.get_workers()).list(queue=ctx.args.queue)


@group.command("get", "show a worker", _ID)
async def get_worker(ctx: Context) -> object:
    """``pgqrs worker get ID``."""
    async with ctx.admin() as admin:
        return await admin.get_worker(ctx.args.id)


async def _set_status(ctx: Context, status: WorkerStatus) -> object:
    async with ctx.admin() as admin:
        await admin.set_worker_status(ctx.args.id, status)
        return await admin.get_worker(ctx.args.id)


@group.command("suspend", "suspend a ready worker", _ID)
async def suspend_worker(ctx: Context) -> object:
    """``pgqrs worker suspend ID``: ready → suspended."""
    return await _set_status(ctx, WorkerStatus.SUSPENDED)


@group.command("resume", "resume a suspended worker", _ID)
async def resume_worker(ctx: Context) -> object:
    """``pgqrs worker resume ID``: suspended → ready."""
    return await _set_status(ctx, WorkerStatus.READY)


@group.command("stop", "stop a worker and release its messages", _ID)
async def stop_worker(ctx: Context) -> object:
    """``pgqrs worker stop ID``: → stopped, its messages released."""
    return await _set_status(ctx, WorkerStatus.STOPPED)


@group.command("messages", "messages a worker holds", _ID)
async def worker_messages(ctx: Context) -> object:
    """``pgqrs worker messages ID``."""
    async with ctx.admin() as admin:
        return await admin.get_worker_messages(ctx.args.id)


@group.command("release", "release a worker's messages", _ID)
async def release_worker_messages(ctx: Context) -> object:
    """``pgqrs worker release ID``: its messages become visible at once."""
    async with ctx.admin() as admin:
        return {"id": ctx.args.id, "released": await admin.release_worker_messages(ctx.args.id)}


@group.command("delete", "delete a stopped worker", _ID)
async def delete_worker(ctx: Context) -> object:
    """``pgqrs worker delete ID``."""
    async with ctx.admin() as admin:
        await admin.delete_worker(ctx.args.id)
        return {"deleted": ctx.args.id}


@group.command("stats", "worker counts per queue", _STALE_AFTER)
async def worker_stats(ctx: Context) -> object:
    """``pgqrs worker stats [--stale-after DURATION]``: counts by status, per queue."""
    async with ctx.admin() as admin:
        stale = ctx.args.stale_after or admin.settings.stale_threshold
        return await admin.worker_health_stats(stale, group_by_queue=True)


@group.command("health", "worker counts", _STALE_AFTER)
async def worker_health(ctx: Context) -> object:
    """``pgqrs worker health [--stale-after DURATION]``: counts by status."""
    async with ctx.admin() as admin:
        stale = ctx.args.stale_after or admin.settings.stale_threshold
        return await admin.worker_health_stats(stale)


@group.command("purge", "delete old stopped workers",
               arg("--older-than", type=duration, default=7 * 86400.0))
async def purge_workers(ctx: Context) -> object:
    """``pgqrs worker purge [--older-than DURATION]``."""
    async with ctx.admin() as admin:
        return {"purged": await admin.purge_old_workers(ctx.args.older_than)}
