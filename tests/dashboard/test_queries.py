"""The dashboard's list queries stay on indexes (EXPLAIN), and pages over 10,000 dead
letters render fast (measured and printed, never asserted: run with ``-s`` to see)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.dialects import postgresql

import pgqrs.dashboard
from pgqrs import Admin, Consumer, Producer
from pgqrs.dashboard._queries import Cursor, DashboardRepository

from .conftest import client_for, sql

DEAD = 10_000
PGQRS_TABLES = {"pgqrs_archive", "pgqrs_messages"}


@pytest.fixture
async def big(dsn: str) -> AsyncIterator[dict[str, int]]:
    """10,000 dead letters in "imports", 10,000 processed messages in "exports" spread
    over 30 days, and 5,000 live messages in "imports"."""
    async with Admin(dsn) as admin:
        imports = (await admin.create_queue("imports")).id
        exports = (await admin.create_queue("exports")).id
    async with Producer(dsn, "imports", "p", 1) as p, Consumer(dsn, "imports", "c", 2) as c:
        await p.enqueue_batch([{"row": i, "file": "customers.csv"} for i in range(DEAD)])
        for _ in range(DEAD // 1000):
            await c.archive_dead([m.id for m in await c.dequeue(1000)])
        await p.enqueue_batch([{"row": i} for i in range(5000)])
    async with Producer(dsn, "exports", "p", 3) as p, Consumer(dsn, "exports", "c", 4) as c:
        await p.enqueue_batch([{"n": i} for i in range(DEAD)])
        for _ in range(DEAD // 1000):
            await c.archive_batch([m.id for m in await c.dequeue(1000)])
    # A month of history, one row a minute: the chart's 15 minutes are a small slice.
    await sql(dsn, "UPDATE pgqrs_archive SET archived_at = now() - (20001 - id) * "
                   "interval '2 minutes'")
    await sql(dsn, "ANALYZE")
    yield {"imports": imports, "exports": exports}


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def explain(dsn: str, statement: Any, params: dict[str, Any]) -> dict[str, Any]:
    compiled: Any = statement.compile(dialect=postgresql.asyncpg.dialect(),  # type: ignore[attr-defined]
                                      schema_translate_map={None: "public"},
                                      render_schema_translate=True)
    values = {**compiled.params, **params}
    args = [values[name] for name in compiled.positiontup]
    conn = await asyncpg.connect(dsn)
    try:
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {compiled}", *args)
    finally:
        await conn.close()
    return dict(json.loads(raw)[0]["Plan"])


def full_scans(plan: dict[str, Any]) -> list[str]:
    return [n["Relation Name"] for n in _nodes(plan)
            if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in PGQRS_TABLES]


async def test_list_queries_use_indexes(dsn: str, big: dict[str, int]) -> None:
    repo = DashboardRepository("public")
    imports = big["imports"]
    checks: list[tuple[str, Any, dict[str, Any]]] = []
    for queue_id in (None, imports):
        for cursor in (Cursor(), Cursor(before=5000), Cursor(after=5000)):
            stmt, _ = repo.dead_letters_statement(queue_id=queue_id, cursor=cursor, limit=50)
            checks.append((f"dead letters {queue_id} {cursor}", stmt, {}))
        checks.append((f"throughput {queue_id}", repo.throughput_statement(queue_id=queue_id),
                       {"p_bucket": 30, "p_window": timedelta(minutes=15)}))
    # A rare state (here: no delayed or leased messages at all) is a filter over the
    # queue's live rows, index walk or not, as the state counts above the list are: the
    # live table is the working set. The lists that can be long are checked here.
    for state in (None, "pending"):
        for cursor in (Cursor(), Cursor(after=DEAD + 2500)):
            stmt, _ = repo.messages_statement(queue_id=imports, state=state, cursor=cursor,
                                              limit=50)
            checks.append((f"messages {state} {cursor}", stmt, {"p_max_read_ct": 5}))
    stmt, _ = repo.workers_statement(status=None, cursor=Cursor(), limit=50)
    checks.append(("workers", stmt, {}))
    for name, statement, params in checks:
        plan = await explain(dsn, statement, params)
        assert not full_scans(plan), (name, json.dumps(plan, indent=1))


@pytest.mark.parametrize("queue", [None, "imports"])
async def test_dead_letter_counts_are_bounded(dsn: str, big: dict[str, int],
                                             queue: str | None) -> None:
    """A count stops at its cap (a Limit above the scan): it never reads more than ``cap``
    dead letters, however many there are ("10,000+" on the page)."""
    repo = DashboardRepository("public")
    statement = repo.dead_letter_count_statement(queue_id=queue and big[queue], cap=10_001)
    plan = await explain(dsn, statement, {})
    limits = [n for n in _nodes(plan) if n["Node Type"] == "Limit"]
    assert limits and limits[0]["Plan Rows"] <= 10_001


async def test_pages_over_ten_thousand_dead_letters_render_fast(
        dsn: str, big: dict[str, int]) -> None:
    app = pgqrs.dashboard.app(dsn, actions=True)
    async with client_for(app) as client:
        assert (await client.get("/dead-letters")).status_code == 200  # warm up
        for path in ("/dead-letters", "/dead-letters?queue=imports",
                     "/dead-letters?before=5000", "/dead-letters?per_page=1000",
                     "/", "/queue?name=imports", "/queue?name=imports&state=pending"):
            start = time.perf_counter()
            response = await client.get(path)
            elapsed = time.perf_counter() - start
            assert response.status_code == 200, response.text
            print(f"\n{path}: {elapsed * 1000:.0f} ms, {len(response.content):,} bytes")
        page = (await client.get("/dead-letters")).text
        assert "10,000 dead letters" in page and page.count('id="dead-') == 50
        assert "10,000+" not in page
