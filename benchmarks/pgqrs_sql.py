"""pgqrs's own hot-path SQL, compiled the way pgqrs compiles it, for the floor to run.

The floor must run the statements pgqrs runs, or ``pgqrs / floor`` compares different
queries. So it copies none: it takes pgqrs's module-level statements
(``pgqrs/repositories/messages.py``), compiles them as pgqrs's fast path does (asyncpg
dialect, schema map rendered in, positional ``$n`` parameters) and prepares the text on
its own connection. The one deliberate difference: pgqrs's enqueues NOTIFY in the same
statement, while the floor's enqueues are the same INSERTs without it (the floor wakes its
consumers with a trigger; see ``sides.FloorSide``).

The floor's connections also get the session setting pgqrs's own Producer and Consumer
connections get (``session_setup``: generic plans, see ``pgqrs._db.GENERIC_PLANS``), so
that the same statements are planned the same way on both sides.

Three functions know pgqrs's internals, so a change there is a one-line change here:
``pgqrs_statement`` (how module-level statements are stored), ``_compile`` (how pgqrs
compiles them) and ``session_setup`` (how pgqrs sets up its connections).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.sql.selectable import CTE

from pgqrs._db import GENERIC_PLANS
from pgqrs.repositories import messages
from pgqrs.repositories._base import Statement
from pgqrs.repositories._base import _compile as pgqrs_compile
from pgqrs.settings import Settings


def pgqrs_statement(name: str) -> Any:
    """The SQLAlchemy statement behind ``pgqrs.repositories.messages.<name>``."""
    statement = getattr(messages, name)
    return statement.executable if isinstance(statement, Statement) else statement


def _compile(statement: Any, schema: str) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    compiled = pgqrs_compile(statement, schema, PGDialect_asyncpg())
    # Only the literals pgqrs binds have a value; a parameter the floor does not pass must
    # raise (KeyError in ``args``), not run as NULL.
    defaults = {n: v for n, v in compiled.defaults.items() if v is not None}
    return compiled.sql, compiled.names, defaults


async def session_setup(conn: asyncpg.Connection) -> None:
    """What pgqrs runs on each new connection of a Producer's or Consumer's own engine."""
    if conn.get_server_version() >= (12,):
        await conn.execute(GENERIC_PLANS)


def without_notify(statement: Any) -> Any:
    """The DML inside ``messages.notifying(...)``: the same statement minus its NOTIFY."""
    (changed,) = statement.get_final_froms()
    if not isinstance(changed, CTE):
        raise TypeError(f"not a notifying(...) statement: {statement}")
    return changed.element


class Compiled(NamedTuple):
    """SQL text for ``asyncpg.Connection.prepare`` and the names of its ``$n`` parameters."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    """Values of the literals pgqrs binds as parameters (e.g. the 'ready' status)."""

    def args(self, **params: Any) -> list[Any]:
        """Positional arguments from pgqrs's parameter names (``p_queue_id=...``)."""
        return [params[n] if n in params else self.defaults[n] for n in self.names]

    def binder(self, varying: str, **fixed: Any) -> Callable[[Any], list[Any]]:
        """Positional arguments with every parameter but ``varying`` fixed now.

        What a hand-written client does: the per-call cost is one list copy.
        """
        template = self.args(**fixed, **{varying: None})
        at = self.names.index(varying)

        def args(value: Any) -> list[Any]:
            out = template.copy()
            out[at] = value
            return out

        return args


@functools.cache
def compiled(name: str, *, notify: bool = True) -> Compiled:
    """pgqrs's statement ``name`` compiled for the schema pgqrs clients use by default.

    ``notify=False`` strips the NOTIFY of an enqueue (see the module docstring).
    """
    statement = pgqrs_statement(name)
    if not notify:
        statement = without_notify(statement)
    return Compiled(*_compile(statement, Settings.build().schema))


def enqueue() -> Compiled:
    """Insert one message: ``p_queue_id``, ``p_payload`` (JSON text), ``p_delay``,
    ``p_worker_id``; returns ``id``."""
    return compiled("_ENQUEUE", notify=False)


def enqueue_batch() -> Compiled:
    """Insert ``p_payloads`` (JSON texts) in order; returns their ``id``s."""
    return compiled("_ENQUEUE_BATCH", notify=False)


def claim() -> Compiled:
    """The ``SKIP LOCKED`` claim: ``p_queue_id``, ``p_max_read_ct``, ``p_worker_id``,
    ``p_limit``, ``p_lease``; returns the claimed ``pgqrs_messages`` rows."""
    return compiled("_DEQUEUE")


def archive() -> Compiled:
    """Move ``p_ids`` held by ``p_worker_id`` into the archive; returns
    ``original_msg_id``s."""
    return compiled("_ARCHIVE")


def archive_and_claim() -> Compiled:
    """Archive ``p_ids`` (deliveries ``p_read_cts``) held by ``p_worker_id`` and claim up to
    ``p_limit``, in one statement (what ``Consumer.consume`` sends once handlers finish);
    returns the ``acked`` ids next to each claimed row (``id`` NULL: nothing claimed)."""
    return compiled("_ARCHIVE_AND_DEQUEUE")
