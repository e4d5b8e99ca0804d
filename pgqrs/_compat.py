"""Clients created from an Admin, as in the original binding: one engine, on-time registration.

The original binding's ``Producer(admin, queue, hostname, port)`` shared the Admin's pool
and registered its worker row inside the constructor (blocking I/O). pgqrs keeps
"construction does no I/O" and still shows such a client in the Admin's worker list at once:

* The client builds its ``Database`` on the Admin's engine (it never disposes it) and takes
  the Admin's settings (schema, heartbeat interval, ...), see :func:`client_database`.
* The Admin's database is an :class:`AdminDatabase`, which keeps the clients created from
  the Admin that are not registered yet. Every Admin method and every table accessor
  (``get_workers()`` and friends) reaches the database through its ``transaction()`` or
  ``statement()``: that is the one place the hook sits. Before opening a connection it
  awaits ``client.register()`` for each pending client, so ``Consumer(admin, ...)`` followed
  by ``await (await admin.get_workers()).count()`` counts the consumer.

A client that cannot register at that point (its queue does not exist yet, a live worker
holds its hostname and port, it was closed) is dropped from the list with a log line and
raises the typed error at its own first use, where the original raised in the constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from pgqrs import errors
from pgqrs._db import Database
from pgqrs.config import Config
from pgqrs.repositories import Executor
from pgqrs.settings import Settings

log = logging.getLogger("pgqrs")

_ENGINE_OPTIONS = frozenset({"pool_size", "max_overflow", "connect_timeout",
                             "statement_timeout", "pgbouncer"})
"""Options that shape an engine, which a client created from an Admin shares."""


class _Registrable(Protocol):
    async def register(self) -> int: ...


class AdminDatabase(Database):
    """The Admin's database, which registers the clients created from the Admin on time."""

    def __init__(self, target: str | AsyncEngine, settings: Settings, *,
                 pooled: bool = True) -> None:
        super().__init__(target, settings, pooled=pooled)
        self._pending: list[_Registrable] = []
        self._registering: asyncio.Lock | None = None

    def adopt(self, client: _Registrable) -> None:
        """Register ``client`` before this Admin's next database call."""
        self._pending.append(client)

    async def register_pending(self) -> None:
        """Register every adopted client that is not registered yet (see the module doc)."""
        if not self._pending and not (self._registering and self._registering.locked()):
            return
        if self._registering is None:
            self._registering = asyncio.Lock()
        # Concurrent Admin calls wait here, so none reads before the clients are in.
        async with self._registering:
            while self._pending:
                client = self._pending.pop(0)
                try:
                    await client.register()
                except errors.StateError:
                    pass  # closed before its first use: there is nothing to show
                except errors.PgqrsError as exc:
                    log.warning("pgqrs: %r could not register yet (%s); it will try again "
                                "on its first call", client, exc)
                except BaseException:
                    self._pending.insert(0, client)  # cancelled: try again next time
                    raise

    @contextlib.asynccontextmanager
    async def transaction(
        self, lent: Executor | None = None, **context: Any
    ) -> AsyncIterator[Executor]:
        """``Database.transaction``, after registering pending clients (not on a lent one)."""
        if lent is None:
            await self.register_pending()
        async with super().transaction(lent, **context) as executor:
            yield executor

    @contextlib.asynccontextmanager
    async def statement(self, lent: Executor | None = None) -> AsyncIterator[Executor]:
        """``Database.statement``, after registering pending clients (not on a lent one)."""
        if lent is None:
            await self.register_pending()
        async with super().statement(lent) as executor:
            yield executor

    async def dispose(self) -> None:
        """Forget pending clients, then dispose as ``Database`` does."""
        self._pending.clear()
        await super().dispose()


def lender(target: object) -> AdminDatabase | None:
    """The database of ``target`` if it is an Admin (clients then share it), else None."""
    db = getattr(target, "_db", None)
    return db if isinstance(db, AdminDatabase) else None


def unpack_config(
    target: str | AsyncEngine | Config, schema: str | None, max_read_ct: int | None,
    options: dict[str, Any],
) -> tuple[str | AsyncEngine, str | None, int | None, dict[str, Any]]:
    """Turn ``Admin(config, ...)`` into ``Admin(dsn, ...)``; explicit keywords win.

    The ``Config``'s queue rules (``max_read_ct``, ``default_lock_time_seconds``) become
    the Admin's defaults for the queues it creates: clients then follow each queue's.

    Returns:
        (dsn or engine, schema, max_read_ct, Settings options); everything but the target
        passes through unchanged when ``target`` is not a ``Config``.
    """
    if not isinstance(target, Config):
        return target, schema, max_read_ct, options
    settings, config_read_ct = target.admin_options()
    merged = {**settings, **{k: v for k, v in options.items() if v is not None}}
    chosen_schema = merged.pop("schema") if schema is None else schema
    merged.pop("schema", None)
    return (target.dsn, chosen_schema, config_read_ct if max_read_ct is None else max_read_ct,
            merged)


def client_database(admin_db: AdminDatabase,
                    options: dict[str, Any]) -> tuple[Settings, Database]:
    """Settings and a Database on the Admin's engine for a client created from the Admin.

    Raises:
        ConfigurationError: an option is unknown, or belongs to the shared engine
            (pool, timeouts, pgbouncer) or schema.
    """
    settings = admin_db.settings
    given = {k: v for k, v in options.items() if v is not None}
    if given:
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise errors.ConfigurationError(
                f"Unknown option(s) {unknown}; known options: {sorted(known)}")
        shared = sorted(k for k, v in given.items() if k in _ENGINE_OPTIONS
                        or (k == "schema" and v != settings.schema))
        if shared:
            raise errors.ConfigurationError(
                f"{', '.join(shared)}: a client created from an Admin shares the Admin's "
                "engine and schema; set these on the Admin instead")
        settings = dataclasses.replace(settings, **given)
    db = Database(admin_db.engine, settings)
    # LISTEN connections are shared per database identity; a pgqrs-made engine's URL is
    # blank (it connects through a creator), so take the Admin's.
    db.identity = admin_db.identity
    return settings, db
