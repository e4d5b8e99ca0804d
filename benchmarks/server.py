"""The PostgreSQL the benchmarks run against, and a fresh database for every run.

Without a DSN a throw-away server is started exactly as the tests do
(``pgqrs.testing.EphemeralPostgres``), except that PostgreSQL's default durability is
restored (``fsync``, ``synchronous_commit`` and ``full_page_writes`` on; the test server
turns them off) and its data directory goes to the system temporary directory, on disk,
rather than ``/dev/shm`` (``--pg-tmpdir /dev/shm`` gives the tests' RAM-backed setting,
where a commit costs almost nothing and client overhead weighs far more).

Every run gets its own database cloned from a template that has the schema installed
(pgqrs's with the benchmark queue created, by default; the minimal floor and each peer
have templates of their own), so no run sees another's rows.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from benchmarks.api import QUEUE
from pgqrs import Admin
from pgqrs.testing import EphemeralPostgres

__all__ = ["QUEUE", "Databases", "Server", "default_tmpdir", "install_pgqrs", "plain",
           "server", "server_version", "sql", "with_database"]
DEFAULT_DURABILITY: dict[str, str | int | float | bool] = {
    "fsync": True, "synchronous_commit": True, "full_page_writes": True,
}


def plain(dsn: str) -> str:
    """``dsn`` as a libpq URL asyncpg accepts (drops a ``+asyncpg`` driver suffix)."""
    return dsn.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database of the same server."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@dataclass(frozen=True)
class Server:
    """A maintenance DSN (a role with CREATEDB) and a one-line description."""

    dsn: str
    description: str
    log: Path | None = None
    """The server log, when we started the server (``None`` for ``--dsn``)."""


def default_tmpdir() -> str:
    """``PGQRS_PG_TMPDIR`` if set, else the system temporary directory (usually on disk)."""
    return os.environ.get("PGQRS_PG_TMPDIR") or tempfile.gettempdir()


@contextlib.contextmanager
def server(dsn: str | None, *, durable: bool = True, tmpdir: str | None = None,
           extra_conf: dict[str, str | int | float | bool] | None = None) -> Iterator[Server]:
    """Use the server at ``dsn``, or start a throw-away one (data under ``tmpdir``)."""
    if dsn:
        yield Server(plain(dsn), "the server given by --dsn / PGQRS_DSN")
        return
    conf = dict(DEFAULT_DURABILITY) if durable else {}
    conf.update(extra_conf or {})
    pg = EphemeralPostgres.from_env(storage_dir=tmpdir or default_tmpdir(),
                                    extra_conf=conf).start()
    try:
        where = pg.directory.parent
        durability = "default durability" if durable else "fsync/synchronous_commit off"
        yield Server(pg.dsn, f"throw-away PostgreSQL {pg.version} from {pg.bindir}, "
                             f"data under {where}, {durability}",
                     pg.directory / "postgres.log")
    finally:
        pg.stop()


async def sql(dsn: str, *statements: str) -> None:
    """Run maintenance statements on a short-lived connection."""
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def install_pgqrs(dsn: str) -> None:
    """``Admin.install()`` plus ``create_queue``: the pgqrs template's contents."""
    async with Admin(dsn) as admin:
        await admin.install()
        await admin.create_queue(QUEUE)


_SERIAL = itertools.count()  # database names, unique across every ``Databases``


class Databases:
    """A template with a schema installed; fresh clones of it.

    Args:
        dsn: the maintenance DSN (a role with CREATEDB).
        name: tells templates apart (one per schema: ``"pgqrs"``, ``"minimal"``, a peer).
        install: fills the template database, given its DSN (default: pgqrs and the
            benchmark queue).
    """

    def __init__(self, dsn: str, name: str = "pgqrs",
                 install: Callable[[str], Awaitable[None]] = install_pgqrs) -> None:
        self.dsn = dsn
        self.name = name
        self._install = install
        suffix = "" if name == "pgqrs" else f"_{name}"
        self.template = f"pgqrs_bench_tmpl_{os.getpid()}{suffix}"

    async def create_template(self) -> None:
        """Create the template database and install the schema in it."""
        await sql(self.dsn, f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)',
                  f'CREATE DATABASE "{self.template}"')
        await self._install(with_database(self.dsn, self.template))

    async def drop_template(self) -> None:
        """Drop the template database."""
        await sql(self.dsn, f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[str]:
        """Yield the DSN of a new clone of the template; drop it afterwards.

        A ``CHECKPOINT`` after the clone keeps the previous run's dirty pages from being
        flushed during this one.
        """
        name = f"pgqrs_bench_{os.getpid()}_{next(_SERIAL)}"
        await sql(self.dsn, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"',
                  "CHECKPOINT")
        try:
            yield with_database(self.dsn, name)
        finally:
            await sql(self.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def server_version(dsn: str) -> str:
    """The server's ``server_version`` (for the results' environment line)."""
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
