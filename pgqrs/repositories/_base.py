"""What every repository shares: the schema map and the error-translating executor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Executable, Result
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.types import TypeDecorator

from pgqrs import errors

Executor = AsyncConnection | AsyncSession


class EncodedJSONB(TypeDecorator[str]):
    """JSONB bound from an already-encoded JSON string (validation encodes it once)."""

    impl = JSONB
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        """Send the string as is; the driver's jsonb codec takes text."""
        return None


class Repository:
    """Base of the repositories: statements run with the schema map, errors translated.

    Repositories never commit: the caller (Producer, Consumer, Admin, or the host
    application through a lent session) owns the transaction.
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        # Per statement, never on the engine or a lent session (it must stay untouched).
        self._options: Mapping[str, Any] = {"schema_translate_map": {None: schema}}

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
