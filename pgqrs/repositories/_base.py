"""What every repository shares: the schema map, error translation, and the fast path.

Statements are SQLAlchemy Core constructs built once at import. They normally run through
SQLAlchemy (``_execute``). On pgqrs's own autocommit connections, whose driver is asyncpg,
the hot-path statements (``_rows``) are compiled by SQLAlchemy once per schema and then
run on the driver connection directly, as prepared statements: SQLAlchemy still builds
and compiles every statement, but its per-call execution machinery is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, cast

from sqlalchemy import Executable, Result
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.types import TypeDecorator

from pgqrs import errors


class DriverExecutor(Protocol):
    """An executor that also exposes its asyncpg driver connection (or None)."""

    driver: Any
    dialect: Dialect

    async def execute(self, statement: Executable, parameters: Any = None, *,
                      execution_options: Any = None) -> Result[Any]: ...


Executor = AsyncConnection | AsyncSession | DriverExecutor
"""What repositories run statements on: a (lent) connection or session, or pgqrs's own."""


class EncodedJSONB(TypeDecorator[str]):
    """JSONB bound from an already-encoded JSON string (validation encodes it once)."""

    impl = JSONB
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        """Send the string as is; the driver's jsonb codec takes text."""
        return None


class _Compiled(NamedTuple):
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]


class Repository:
    """Base of the repositories: statements run with the schema map, errors translated.

    Repositories never commit: the caller (Producer, Consumer, Admin, or the host
    application through a lent session) owns the transaction.
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        # Per statement, never on the engine or a lent session (it must stay untouched).
        self._options: Mapping[str, Any] = {"schema_translate_map": {None: schema}}
        self.channel = f"pgqrs_{schema}"
        """The NOTIFY channel of this schema (see ``_notify``)."""
        # Keyed by the statement object itself (module constants), never by id().
        self._compiled: dict[Executable, _Compiled] = {}

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

    async def _rows(self, executor: Executor, statement: Executable,
                    params: Mapping[str, Any], **context: Any) -> Sequence[Mapping[str, Any]]:
        """Run a module-level statement and return its rows as mappings (fast path)."""
        driver = getattr(executor, "driver", None)
        if driver is None:
            result = await self._execute(executor, statement, params, **context)
            return cast(Sequence[Mapping[str, Any]], result.mappings().all())
        compiled = self._compiled.get(statement)
        if compiled is None:
            dialect = cast(DriverExecutor, executor).dialect
            compiled = self._compiled[statement] = self._compile(statement, dialect)
        args = [params[n] if n in params else compiled.defaults[n] for n in compiled.names]
        with errors.translate_db_errors(**context):
            rows: Sequence[Mapping[str, Any]] = await driver.fetch(compiled.sql, *args)
            return rows

    def _compile(self, statement: Executable, dialect: Dialect) -> _Compiled:
        compiled: Any = statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, schema_translate_map={None: self.schema},
            render_schema_translate=True,
        )
        names = tuple(compiled.positiontup or ())
        defaults = {n: compiled.binds[n].effective_value for n in names if n in compiled.binds}
        return _Compiled(str(compiled), names, defaults)
