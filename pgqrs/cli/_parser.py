"""The argparse tree: global options, argument types, and the parser built from the groups."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pgqrs.cli._command import Group

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}

GLOBAL_DEFAULTS: dict[str, Any] = {
    "dsn": None, "schema": None, "format": "table", "quiet": False, "verbose": False,
}
"""Values of the global options when they are given neither before nor after the command."""


FOREVER = "forever"
"""What :func:`retention` returns for ``forever`` (or ``none``): keep archived rows."""


def duration(text: str) -> float:
    """Parse ``30``, ``30s``, ``5m``, ``2h`` or ``7d`` into seconds (argparse type)."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 30s, 5m, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def retention(text: str) -> float | str:
    """A duration, or ``forever``/``none`` (:data:`FOREVER`): how long archives are kept."""
    if text.strip().lower() in {FOREVER, "none"}:
        return FOREVER
    return duration(text)


def format_duration(seconds: float | None) -> str:
    """Seconds as the CLI writes durations: ``500ms``, ``30s``, ``5m``, ``7d``; None: forever."""
    if seconds is None:
        return FOREVER
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


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


def build_parser(groups: Iterable[Group]) -> argparse.ArgumentParser:
    """The full argparse tree of ``pgqrs``: every group's commands, each with its handler."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="pgqrs", parents=[common],
        description="pgqrs: a durable message queue in PostgreSQL. Operate it from here.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in groups:
        group.add_to(commands, common)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and fill in the global options that were given nowhere.

    Exits with status 2 (argparse's usage error) on a bad command line.
    """
    args = parser.parse_args(argv)
    # Not parser.set_defaults(): the shared parent actions would carry those defaults into
    # every subcommand and overwrite options given before the subcommand.
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if getattr(args, "handler", None) is None:
        # Every leaf sets a handler and every level of subcommands is required, so argparse
        # has already refused a missing command; this keeps it a usage error regardless.
        parser.error("a command is required")
    return args


def resolve_dsn(args: argparse.Namespace) -> str | None:
    """``--dsn``, else ``PGQRS_DSN``, else ``DATABASE_URL``, else ``None``."""
    value: str | None = args.dsn or os.environ.get("PGQRS_DSN") or os.environ.get("DATABASE_URL")
    return value
