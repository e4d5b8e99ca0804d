"""What a command is: a handler registered in a group, and the context it runs with.

Each group module (``queues``, ``messages``, ...) owns one :class:`Group` and registers its
leaf commands on it with :meth:`Group.command`; the parser builder turns every group into
argparse subparsers whose defaults carry the handler. Dispatch is then a lookup of
``args.handler``: there is no table of names to keep in step, and adding a command is a
local change in its group module.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pgqrs import errors
from pgqrs.admin import Admin

Handler = Callable[["Context"], Coroutine[Any, Any, object]]
"""A leaf command: takes the context, returns what to print (``None`` for nothing)."""

_H = TypeVar("_H", bound=Handler)


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """What a handler receives: the parsed arguments and the database, if one was given."""

    args: argparse.Namespace
    """The parsed command line, global options included."""
    optional_dsn: str | None
    """``--dsn``, else ``PGQRS_DSN``, else ``DATABASE_URL``, else ``None``."""

    @property
    def dsn(self) -> str:
        """The database URL, for commands that need one.

        Raises:
            ConfigurationError: no DSN was given anywhere.
        """
        if not self.optional_dsn:
            raise errors.ConfigurationError(
                "No database given: pass --dsn or set PGQRS_DSN (or DATABASE_URL)"
            )
        return self.optional_dsn

    def admin(self) -> Admin:
        """An :class:`Admin` on the given database and ``--schema`` (use ``async with``)."""
        return Admin(self.dsn, schema=self.args.schema)


class UsageError(Exception):
    """A command line that parses but asks for nothing sensible (exit status 2)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Arg:
    """One ``add_argument`` call, kept until the parser is built."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    """Describe an argument with ``ArgumentParser.add_argument``'s own signature."""
    return Arg(flags, options)


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """A registered leaf command."""

    name: str
    help: str
    arguments: tuple[Arg, ...]
    handler: Handler


class Group:
    """The commands of one group (``pgqrs queue ...``), or the top level when unnamed.

    Example:
        group = Group("queue", "manage queues")

        @group.command("get", "show a queue", arg("name"))
        async def get_queue(ctx: Context) -> object:
            async with ctx.admin() as admin:
                return await admin.get_queue(ctx.args.name)
    """

    def __init__(self, name: str | None = None, help: str = "") -> None:
        self.name = name
        """The group's word on the command line; ``None`` puts its commands at the top."""
        self.help = help
        self.commands: list[Command] = []
        """Leaf commands, in registration order (the order ``--help`` lists them)."""

    def command(self, name: str, help: str, *arguments: Arg) -> Callable[[_H], _H]:
        """Register the decorated coroutine function as the handler of ``name``.

        Raises:
            ValueError: ``name`` is already registered in this group.
        """
        if any(c.name == name for c in self.commands):
            raise ValueError(f"Command {name!r} is registered twice")

        def register(handler: _H) -> _H:
            self.commands.append(Command(name, help, arguments, handler))
            return handler

        return register

    def add_to(self, commands: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
        """Add this group's parsers under ``commands`` (the top-level subparsers action)."""
        target = commands
        if self.name is not None:
            group = commands.add_parser(self.name, parents=[common], help=self.help,
                                        description=self.help)
            # required: a bare `pgqrs queue` is a usage error (exit 2), never a default.
            target = group.add_subparsers(dest="action", required=True, metavar="ACTION")
        for command in self.commands:
            parser = target.add_parser(command.name, parents=[common], help=command.help,
                                       description=command.help)
            for argument in command.arguments:
                parser.add_argument(*argument.flags, **argument.options)
            parser.set_defaults(handler=command.handler)
