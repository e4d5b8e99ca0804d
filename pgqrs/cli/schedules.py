"""``pgqrs schedule ...``: recurring messages (``Admin.schedule``)."""

from __future__ import annotations

from pgqrs import errors
from pgqrs.cli._command import Context, Group, arg
from pgqrs.cli.messages import _json_object

group = Group("schedule", "recurring messages (enqueued by `pgqrs maintain`)")
"""The ``pgqrs schedule`` commands."""


@group.command(
    "add", "define (or redefine) a recurring message",
    arg("queue"), arg("name"),
    arg("cron", help="e.g. '*/5 * * * *' (5 fields) or '*/10 * * * * *' (seconds first)"),
    arg("payload", help="a JSON object"),
    arg("--timezone", default="UTC", help="IANA zone the expression is read in (default UTC)"),
    arg("--header", action="append", default=[], metavar="KEY=VALUE",
        help="a header stored with the schedule (repeatable)"),
    arg("--skip-missed", action="store_true",
        help="skip ticks missed while no runner ran (default: enqueue one on catch-up)"),
)
async def add_schedule(ctx: Context) -> object:
    """``pgqrs schedule add QUEUE NAME CRON 'JSON' [--timezone TZ] [--skip-missed]``."""
    args = ctx.args
    headers = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep:
            raise errors.ValidationError(f"--header takes KEY=VALUE, got {item!r:.80}")
        headers[key] = value
    async with ctx.admin() as admin:
        return await admin.schedule(args.queue, args.name, cron=args.cron,
                                    payload=_json_object(args.payload),
                                    headers=headers or None, timezone=args.timezone,
                                    catch_up=not args.skip_missed)


@group.command("list", "list recurring messages", arg("--queue"))
async def list_schedules(ctx: Context) -> object:
    """``pgqrs schedule list [--queue Q]``."""
    async with ctx.admin() as admin:
        return await admin.list_schedules(ctx.args.queue)


@group.command("remove", "remove a recurring message", arg("name"))
async def remove_schedule(ctx: Context) -> object:
    """``pgqrs schedule remove NAME``."""
    async with ctx.admin() as admin:
        if not await admin.unschedule(ctx.args.name):
            raise errors.PgqrsError(f"No schedule named {ctx.args.name!r}")
        return {"removed": ctx.args.name}
