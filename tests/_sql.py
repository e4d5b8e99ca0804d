"""One helper for tests that check the server's own rows: a statement on a connection of its
own (never the client under test's), closed afterwards.

Import it as ``from _sql import sql`` (``tests/`` is on ``sys.path``, see ``_programs``).
"""

from __future__ import annotations

import asyncpg


async def sql(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    """Run ``query`` with ``args`` on a fresh connection to ``dsn``; return its rows."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()
