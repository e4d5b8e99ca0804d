"""Alembic glue: the one env implementation, install/verify helpers, and host hooks.

Three entry points share this module and the one ``pgqrs/migrations`` directory:
``alembic upgrade head`` at the repository root (or from a host's ini section),
``await Admin(...).install()`` / ``pgqrs install``, and a host application running pgqrs's
revisions beside its own. Alembic is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import asyncio
import configparser
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from pgqrs import _dsn, errors
from pgqrs.models import PgqrsBase
from pgqrs.settings import validate_schema

if TYPE_CHECKING:
    from alembic.config import Config

VERSION_TABLE = "pgqrs_alembic_version"
"""pgqrs's own Alembic version table, kept in the pgqrs schema."""
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""The packaged Alembic script directory (env.py, template, versions)."""
ADVISORY_LOCK_KEY = 0x7067_7172_7301
"""Transaction-level advisory lock serialising installs (b"pgqrs\\x01")."""

_OWN_TABLES = frozenset(PgqrsBase.metadata.tables) | {VERSION_TABLE}
_INSTALL_HINT = "run `pgqrs install` or `await Admin(...).install()`"


def migration_schema() -> str:
    """Return the schema the running migration targets (used by every revision).

    Reads ``pgqrs_schema`` from the migration context's options (set by pgqrs's env), else
    its ``version_table_schema``, else ``public`` (a host env in multiple-bases mode).
    """
    from alembic import op

    opts = op.get_context().opts
    schema = opts.get("pgqrs_schema") or opts.get("version_table_schema") or "public"
    return validate_schema(str(schema))


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` filter for *host* environments: hide pgqrs's objects.

    Pass it as ``context.configure(include_name=pgqrs.migrate.include_name)`` so that the
    host's ``alembic revision --autogenerate`` never proposes dropping pgqrs tables.
    """
    if type_ == "table":
        return name not in _OWN_TABLES
    table = (parent_names or {}).get("table_name")
    return table not in _OWN_TABLES


def _include_own_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """The inverse filter, for pgqrs's own env: look at pgqrs's tables only."""
    if type_ == "schema":
        return True
    if type_ == "table":
        return name in _OWN_TABLES and name != VERSION_TABLE
    return (parent_names or {}).get("table_name") in _OWN_TABLES


def configure_kwargs(schema: str) -> dict[str, Any]:
    """Keyword arguments every pgqrs ``context.configure()`` call receives."""
    return {
        "target_metadata": PgqrsBase.metadata,
        "version_table": VERSION_TABLE,
        "version_table_schema": schema,
        "include_name": _include_own_name,
        "pgqrs_schema": schema,
    }


def make_config(schema: str, *, connection: Connection | None = None,
                output: io.StringIO | None = None) -> Config:
    """Build an Alembic ``Config`` pointing at the packaged migrations."""
    from alembic.config import Config

    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.attributes["pgqrs_schema"] = schema
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def run_env() -> None:
    """The body of every pgqrs ``env.py`` (packaged and repository root)."""
    from alembic import context

    config = context.config
    schema = _env_schema(config)
    if context.is_offline_mode():
        context.configure(
            url="postgresql://",
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            **configure_kwargs(schema),
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_online(connection, schema)
        return
    _configure_logging(config)
    asyncio.run(_run_from_command(_env_url(config), schema))


def _env_schema(config: Config) -> str:
    from alembic import context

    schema = (
        config.attributes.get("pgqrs_schema")
        or context.get_x_argument(as_dictionary=True).get("schema")
        or os.environ.get("PGQRS_SCHEMA")
        or config.get_main_option("pgqrs.schema")
        or "public"
    )
    return validate_schema(schema)


def _env_url(config: Config) -> str:
    url = (
        os.environ.get("PGQRS_DSN")
        or os.environ.get("DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise errors.ConfigurationError(
            "No database URL: set PGQRS_DSN (or DATABASE_URL, or sqlalchemy.url in alembic.ini)"
        )
    return url


def _configure_logging(config: Config) -> None:
    name = config.config_file_name
    if not name:
        return
    parser = configparser.ConfigParser()
    parser.read(name)
    if parser.has_section("formatters") and parser.has_section("loggers"):
        from logging.config import fileConfig

        fileConfig(name, disable_existing_loggers=False)


async def _run_from_command(url: str, schema: str) -> None:
    import asyncpg
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    parsed = _dsn.parse(url)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(parsed.libpq_url, timeout=parsed.connect_timeout or 30)

    engine = create_async_engine("postgresql+asyncpg://", async_creator=connect,
                                 poolclass=NullPool)
    try:
        if _upgrading_to_head():
            async with engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await auto.run_sync(prepare_sync, schema)
        async with engine.begin() as conn:
            await _lock(conn)
            await conn.run_sync(_run_online, schema)
    finally:
        await engine.dispose()


def _upgrading_to_head() -> bool:
    """True when the running ``alembic`` command is ``upgrade head`` (or ``heads``)."""
    from alembic import context

    options = getattr(context.config, "cmd_opts", None)
    command = getattr(options, "cmd", None)
    name = getattr(command[0], "__name__", None) if command else None
    return name == "upgrade" and getattr(options, "revision", None) in ("head", "heads") \
        and not getattr(options, "sql", False)


def prepare_sync(connection: Connection, schema: str) -> None:
    """Run the online steps of the revisions an upgrade to head will apply, first.

    A revision may define ``prepare_online(connection, schema)``: the parts of its upgrade
    that must not run inside a transaction on a populated database (``CREATE INDEX
    CONCURRENTLY``), idempotent, so that its ``upgrade()`` finds them done. This calls them,
    oldest revision first, under the install lock taken at session level (two upgraders
    never interleave). It does nothing on a fresh install (the tables are created empty in
    the upgrade's one transaction), at head, or unless ``connection`` is in autocommit
    mode (then ``upgrade()`` does every step inside its transaction).
    """
    from alembic.script import ScriptDirectory

    if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        return
    script = ScriptDirectory(str(MIGRATIONS_DIR))

    def pending() -> list[Any]:
        current = current_revision(connection, schema)
        if current is None:
            return []
        steps = reversed(list(script.iterate_revisions("heads", current)))
        return [r.module for r in steps if r.revision != current
                and hasattr(r.module, "prepare_online")]

    if not pending():
        return
    connection.execute(select(func.pg_advisory_lock(ADVISORY_LOCK_KEY)))
    try:
        for module in pending():  # again: another upgrader may have finished meanwhile
            module.prepare_online(connection, schema)
    finally:
        connection.execute(select(func.pg_advisory_unlock(ADVISORY_LOCK_KEY)))


def _run_online(connection: Connection, schema: str) -> None:
    from alembic import context

    ensure_schema(connection, schema)
    context.configure(connection=connection, **configure_kwargs(schema))
    with context.begin_transaction():
        context.run_migrations()


def ensure_schema(connection: Connection, schema: str) -> None:
    """Create ``schema`` unless ``pg_namespace`` already has it.

    ``CREATE SCHEMA IF NOT EXISTS`` would still demand CREATE on the database, which a
    least-privilege role may lack even though the schema exists.
    """
    exists = connection.execute(
        text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}
    ).first()
    if exists is None:
        connection.execute(text(f'CREATE SCHEMA "{validate_schema(schema)}"'))


_LOCK = select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY))


async def _lock(conn: AsyncConnection) -> None:
    await conn.execute(_LOCK)


def lock_sync(connection: Connection) -> None:
    """Take the install lock on a synchronous connection (released at commit/rollback)."""
    connection.execute(_LOCK)


async def install(conn: AsyncConnection, schema: str) -> None:
    """Upgrade ``schema`` to head on ``conn`` under the install lock (no commit here)."""
    await _lock(conn)
    await conn.run_sync(upgrade_sync, schema)


def upgrade_sync(connection: Connection, schema: str, revision: str = "head") -> None:
    """Run ``alembic upgrade`` on a lent synchronous connection."""
    from alembic import command

    command.upgrade(make_config(schema, connection=connection), revision)


def downgrade_sync(connection: Connection, schema: str, revision: str = "base") -> None:
    """Run ``alembic downgrade`` on a lent synchronous connection."""
    from alembic import command

    command.downgrade(make_config(schema, connection=connection), revision)


def install_sql(schema: str) -> str:
    """Return the DDL that ``install()`` would run, for DBAs who apply it themselves."""
    from alembic import command

    out = io.StringIO()
    command.upgrade(make_config(schema, output=out), "head", sql=True)
    return out.getvalue()


def head_revision() -> str:
    """The newest revision this version of pgqrs ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection, schema: str) -> str | None:
    """The revision recorded in ``schema``'s version table, or None."""
    from alembic.runtime.migration import MigrationContext

    if not _table_exists(connection, schema, VERSION_TABLE):
        return None
    ctx = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    return ctx.get_current_revision()


def _table_exists(connection: Connection, schema: str, table: str) -> bool:
    row = connection.execute(
        text("SELECT to_regclass(:name) IS NOT NULL"), {"name": f'"{schema}"."{table}"'}
    ).scalar()
    return bool(row)


def verify_sync(connection: Connection, schema: str) -> str:
    """Check that ``schema`` holds pgqrs at this code's head revision; return it.

    Raises:
        SchemaNotInstalledError: the schema is missing or partial.
        SchemaVersionMismatchError: the database is at another revision.
    """
    from alembic.script import ScriptDirectory

    revision = current_revision(connection, schema)
    missing = sorted(t for t in PgqrsBase.metadata.tables
                     if not _table_exists(connection, schema, t))
    if revision is None and len(missing) == len(PgqrsBase.metadata.tables):
        raise errors.SchemaNotInstalledError(
            f"pgqrs is not installed in schema {schema!r}; {_INSTALL_HINT}"
        )
    if revision is None or missing:
        raise errors.SchemaNotInstalledError(
            f"pgqrs is only partly installed in schema {schema!r} (revision {revision}, "
            f"missing tables: {', '.join(missing) or 'none'}); {_INSTALL_HINT}"
        )
    head = head_revision()
    if revision != head:
        known = ScriptDirectory(str(MIGRATIONS_DIR)).get_revision
        try:
            is_known = known(revision) is not None
        except Exception:
            is_known = False
        if not is_known:
            raise errors.SchemaVersionMismatchError(
                f"Schema {schema!r} is at revision {revision!r}, which this version of pgqrs "
                f"does not know (its head is {head!r}): the database is newer than the "
                "installed pgqrs; upgrade the pgqrs package"
            )
        raise errors.SchemaVersionMismatchError(
            f"Schema {schema!r} is at revision {revision!r} but this version of pgqrs needs "
            f"{head!r}; {_INSTALL_HINT}"
        )
    return revision
