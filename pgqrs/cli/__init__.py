"""The ``pgqrs`` command line: install the schema and operate queues, messages, workers.

Built on the public API only. Exit codes: 0 success, 1 operational error (one line on
stderr), 2 usage error, 130 interrupted.

Layout: one module per command group (:mod:`~pgqrs.cli.system` for the top-level commands,
:mod:`~pgqrs.cli.maintain`, :mod:`~pgqrs.cli.queues`, :mod:`~pgqrs.cli.messages`,
:mod:`~pgqrs.cli.workers`, :mod:`~pgqrs.cli.archive`, :mod:`~pgqrs.cli.schedules`,
:mod:`~pgqrs.cli.metrics`; :mod:`~pgqrs.cli.dashboard`, a top-level command of its own), each
registering one handler per leaf command on its :class:`~pgqrs.cli._command.Group`. To add
a command, add a decorated handler to its group's module; to add a group, add a module and
list its group in :data:`GROUPS`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from pgqrs import errors
from pgqrs.cli import (
    _output,
    _parser,
    archive,
    dashboard,
    maintain,
    messages,
    metrics,
    queues,
    schedules,
    system,
    workers,
)
from pgqrs.cli._command import Context, Group, UsageError

__all__ = ["GROUPS", "build_parser", "main"]

GROUPS: tuple[Group, ...] = (system.group, maintain.group, queues.group, messages.group,
                             workers.group, archive.group, schedules.group, metrics.group,
                             dashboard.group)
"""Every command group, in the order ``pgqrs --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The full argparse tree of ``pgqrs``; each leaf's defaults carry its ``handler``."""
    return _parser.build_parser(GROUPS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgqrs`` console script; returns the exit code."""
    args = _parser.parse(build_parser(), argv)
    context = Context(args, _parser.resolve_dsn(args))
    try:
        result = asyncio.run(args.handler(context))
    except KeyboardInterrupt:
        print("pgqrs: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"pgqrs {' '.join(_command_words(args))}: error: {exc}", file=sys.stderr)
        return 2
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
            _output.render(result, args.format)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. `pgqrs ... | head`
            return _closed_pipe()
    return 0


def _command_words(args: argparse.Namespace) -> list[str]:
    """The words naming the command that ran (``queue update``), for messages."""
    return [w for w in (getattr(args, "command", None), getattr(args, "action", None)) if w]


def _closed_pipe() -> int:
    # Point stdout at devnull so the interpreter's final flush does not fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0
