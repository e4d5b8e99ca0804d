"""A typical async Alembic env of a host app, plus the one pgqrs line (include_name)."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from host_models import HostBase
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import pgqrs.migrate

config = context.config
use_filter = context.get_x_argument(as_dictionary=True).get("filter", "on") == "on"


def do_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=HostBase.metadata,
        # Hide pgqrs's tables from the host's autogenerate.
        include_name=pgqrs.migrate.include_name if use_filter else None,
    )
    with context.begin_transaction():
        context.run_migrations()


async def main() -> None:
    url = os.environ["HOST_DSN"].replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        await conn.run_sync(do_run)
        await conn.commit()
    await engine.dispose()


asyncio.run(main())
