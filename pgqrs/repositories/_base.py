"""What every repository shares: the schema map, error translation, and the fast path.

Statements are SQLAlchemy Core constructs built once at import. They normally run through
SQLAlchemy (``_execute``). On pgqrs's own autocommit connections, whose driver is asyncpg,
the hot-path statements (``_rows``) are compiled by SQLAlchemy once per schema and then
run on the driver connection directly, as prepared statements: SQLAlchemy still builds
and compiles every statement, but its per-call execution machinery is skipped.

Only a ``Statement`` can take the fast path, and a ``Statement`` can only be created at
module level, so the compiled SQL cached on each one stays bounded: one entry per schema
(and dialect class) for each statement pgqrs declares. A statement built per call
(filters, pagination) is a plain ``Executable`` and goes through ``_execute``, where
SQLAlchemy's own bounded cache looks after it.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, cast

from sqlalchemy import Executable, Result
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.types import TypeDecorator

from pgqrs import errors


class Executes(Protocol):
    """Anything that runs a statement the way ``AsyncConnection.execute`` does."""

    async def execute(self, statement: Executable, parameters: Any = None, *,
                      execution_options: Any = None) -> Result[Any]: ...


class DriverExecutor(Executes, Protocol):
    """An executor that also exposes its asyncpg driver connection (or None)."""

    driver: Any
    dialect: Dialect


Executor = AsyncConnection | AsyncSession | Executes
"""What repositories run statements on: a (lent) connection or session, or pgqrs's own
(including the sync facade's, which answers ``execute`` with a synchronous connection)."""


class EncodedJSONB(TypeDecorator[str]):
    """JSONB bound from an already-encoded JSON string (validation encodes it once)."""

    impl = JSONB
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        """Send the string as is; the driver's jsonb codec takes text."""
        return None


class Compiled(NamedTuple):
    """A statement compiled for one schema: SQL text and its positional parameters."""

    sql: str
    """The SQL, with the schema rendered in and ``$n`` placeholders."""
    names: tuple[str, ...]
    """Bound parameter names in placeholder order."""
    defaults: dict[str, Any]
    """Values of parameters the statement binds itself (literals folded into binds)."""
    bind: Callable[[Mapping[str, Any]], Sequence[Any]]
    """The positional arguments from a mapping of parameter values (``_binder``)."""


class Statement:
    """A module-level statement that the fast path may run on the driver directly.

    Wrap a hot-path statement where it is declared, at module level::

        _EXTEND = Statement(update(_m).where(...).returning(_m.c.id))

    Construction anywhere else raises ``TypeError``: the compiled cache each statement
    keeps is only bounded because the set of statements is fixed at import.
    """

    __slots__ = ("_compiled", "executable")

    def __init__(self, executable: Executable) -> None:
        if sys._getframe(1).f_code.co_name != "<module>":
            raise TypeError(
                "Statement() must be created at module level (its compiled cache lives as "
                "long as the process); run a per-call statement with Repository._execute"
            )
        self.executable = executable
        """The SQLAlchemy construct, for the ordinary (non-driver) path."""
        self._compiled: dict[tuple[str, type[Dialect]], Compiled] = {}

    def __repr__(self) -> str:
        return f"Statement({self.executable!r})"

    def compile(self, schema: str, dialect: Dialect) -> Compiled:
        """The statement compiled for ``schema`` on ``dialect`` (cached per dialect class).

        The class fixes the SQL text because the fast path only runs on asyncpg with its
        default paramstyle (see ``pgqrs._db.DriverConnection``).
        """
        key = (schema, type(dialect))
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _compile(self.executable, schema, dialect)
        return compiled


def _compile(statement: Executable, schema: str, dialect: Dialect) -> Compiled:
    compiled: Any = statement.compile(  # type: ignore[attr-defined]
        dialect=dialect, schema_translate_map={None: schema}, render_schema_translate=True,
    )
    names = tuple(compiled.positiontup or ())
    defaults = {n: compiled.binds[n].effective_value for n in names if n in compiled.binds}
    return Compiled(str(compiled), names, defaults, _binder(names, defaults))


def _binder(names: tuple[str, ...],
            defaults: dict[str, Any]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """``params[n]`` for each name in order (else its default), built once per statement.

    ``itemgetter`` does the lookups in C; a missing parameter raises ``KeyError``.
    """
    if not names:
        return lambda params: ()
    get = operator.itemgetter(*names)
    if len(names) == 1:
        if defaults:
            return lambda params: (get({**defaults, **params}),)
        return lambda params: (get(params),)
    if defaults:
        return lambda params: get({**defaults, **params})
    return get


class Repository:
    """Base of the repositories: statements run with the schema map, errors translated.

    Repositories never commit: the caller (Producer, Consumer, Admin, or the host
    application through a lent session) owns the transaction. They hold no state beyond
    their schema, so one set per schema is shared by every client (``for_schema``).
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        # Per statement, never on the engine or a lent session (it must stay untouched).
        self._options: Mapping[str, Any] = {"schema_translate_map": {None: schema}}
        self.channel = f"pgqrs_{schema}"
        """The NOTIFY channel of this schema (see ``_notify``)."""

    async def _execute(
        self,
        executor: Executor,
        statement: Executable,
        params: Mapping[str, Any] | None = None,
        **context: Any,
    ) -> Result[Any]:
        with errors.translate_db_errors(**context):
            return await executor.execute(
                statement, dict(params) if params else None, execution_options=self._options
            )

    async def _rows(self, executor: Executor, statement: Statement,
                    params: Mapping[str, Any], **context: Any) -> Sequence[Mapping[str, Any]]:
        """Run a module-level statement and return its rows as mappings (fast path)."""
        driver = getattr(executor, "driver", None)
        if driver is None:
            result = await self._execute(executor, statement.executable, params, **context)
            return cast(Sequence[Mapping[str, Any]], result.mappings().all())
        dialect = cast(DriverExecutor, executor).dialect
        # Statement.compile, inlined: this runs on every hot-path call.
        compiled = statement._compiled.get((self.schema, type(dialect)))
        if compiled is None:
            compiled = statement.compile(self.schema, dialect)
        try:
            rows: Sequence[Mapping[str, Any]] = await driver.fetch(compiled.sql,
                                                                   *compiled.bind(params))
        except Exception as exc:
            _translate(exc, context)
            raise
        return rows


def _translate(exc: Exception, context: dict[str, Any]) -> None:
    """Raise ``exc`` as ``errors.translate_db_errors`` would have from around the call.

    The hot path catches instead of entering that context manager on every call: the
    translation is the same, and the success path pays nothing for it.
    """
    with errors.translate_db_errors(**context):
        raise exc
