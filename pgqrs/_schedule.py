"""Recurring messages: the ``ScheduleInfo`` value and cron arithmetic (via ``cronsim``).

A schedule's ticks are the instants its cron expression matches, in its time zone. Ticks
are computed here, in Python, from instants read off the database clock (``now()``), never
the client's: the runner passes in what ``now()`` returned.

Cron expressions have five fields (minute, hour, day of month, month, day of week) or six,
with seconds first (``*/10 * * * * *``: every ten seconds), as ``cronsim`` reads them:
Debian cron's syntax plus ``L``, ``LW``, ``#`` and names (``MON``, ``JAN``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from pgqrs import errors

NAME_MAX_LENGTH = 255
"""Longest schedule name (the column is ``varchar(255)``)."""


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A recurring message as stored in ``pgqrs_schedules`` (``Admin.schedule``)."""

    id: int
    name: str
    queue_name: str
    cron: str
    timezone: str
    """IANA time zone the cron expression is read in (``UTC`` by default)."""
    payload: dict[str, Any]
    headers: dict[str, str] | None
    catch_up: bool
    """True: ticks missed while no runner ran are enqueued once, on catch-up. False: they
    are skipped, and the schedule resumes at its next tick."""
    next_run: datetime
    """The next tick not yet enqueued."""
    last_run_at: datetime | None
    """The tick last enqueued (or skipped), if any."""
    last_message_id: int | None
    """The id of the message the last enqueued tick created."""
    created_at: datetime


def validate_name(name: object) -> str:
    """Return ``name`` if usable as a schedule name, else raise ``ValidationError``."""
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX_LENGTH \
            or not name.isprintable():
        raise errors.ValidationError(
            f"Schedule name must be a non-empty printable str of at most {NAME_MAX_LENGTH} "
            f"characters, got {name!r:.80}")
    return name


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` called ``name``; raises ``ValidationError`` if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise errors.ValidationError(
            f"Unknown time zone {name!r:.80} (use an IANA name such as 'UTC' or "
            "'Europe/Paris')") from exc


def validate_cron(expression: object, timezone: object = "UTC") -> tuple[str, str]:
    """Return ``(expression, timezone)`` normalised, if the expression has ticks.

    Raises:
        ValidationError: not a str, not a cron expression, or one that never matches.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise errors.ValidationError(f"cron must be a non-empty str, got {expression!r:.80}")
    if not isinstance(timezone, str):
        raise errors.ValidationError(f"timezone must be a str, got {timezone!r:.80}")
    expression = " ".join(expression.split())
    next_tick(expression, timezone, datetime.now(UTC))  # parses, and finds a tick
    return expression, timezone


def latest_ticks(expression: str, timezone: str, until: datetime, count: int) -> list[datetime]:
    """Up to ``count`` ticks at or before ``until``, newest first, in UTC.

    Raises:
        ValidationError: the expression is invalid.
    """
    local = (until + timedelta(seconds=1)).astimezone(zone(timezone))
    try:
        ticks = CronSim(expression, local.replace(microsecond=0), reverse=True)
        found = []
        for tick in ticks:
            if tick.astimezone(UTC) > until:
                continue
            found.append(tick.astimezone(UTC))
            if len(found) == count:
                break
    except CronSimError as exc:
        raise errors.ValidationError(f"Invalid cron expression {expression!r:.80}: {exc}") \
            from None
    return found


def ticks_between(expression: str, timezone: str, start: datetime, end: datetime, *,
                  limit: int = 100_000) -> int:
    """How many ticks fall in ``[start, end)``, ``start`` being one (stops at ``limit``)."""
    count, tick = 0, start
    while tick < end and count < limit:
        count += 1
        tick = next_tick(expression, timezone, tick)
    return count


def next_tick(expression: str, timezone: str, after: datetime) -> datetime:
    """The first tick of ``expression`` strictly after ``after`` (an aware datetime), in UTC.

    Raises:
        ValidationError: the expression is invalid, or has no tick in the next 50 years
            (``0 0 30 2 *``).
    """
    local = after.astimezone(zone(timezone))
    try:
        tick = next(CronSim(expression, local))
    except CronSimError as exc:
        raise errors.ValidationError(f"Invalid cron expression {expression!r:.80}: {exc}") \
            from None
    except StopIteration:
        raise errors.ValidationError(
            f"Cron expression {expression!r:.80} never matches (no tick within 50 years)"
        ) from None
    return tick.astimezone(UTC)
