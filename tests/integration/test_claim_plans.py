"""The claim stays on its index and reads only what it claims, whatever else is queued.

Each test fills a queue with SQL (the shape of the data matters here, not how it got
there), then runs pgqrs's own claim statement under ``EXPLAIN (ANALYZE, BUFFERS)`` in a
transaction that is rolled back, twice: with a custom plan (PostgreSQL's choice for the
claim under its default ``plan_cache_mode``, and what a host's connection runs) and with
the generic plan (prepared, then ``EXPLAIN EXECUTE`` under ``force_generic_plan``: what
a Producer's or Consumer's own connection runs, see ``pgqrs._db.GENERIC_PLANS``; it is
planned without the parameters' values: which queue, how many to claim). It checks from
the plan that:
- no node scans ``pgqrs_messages`` sequentially;
- the scans of ``pgqrs_messages`` removed (almost) no rows by filter: the claim did not
  walk rows it could not claim (delayed, leased, parked, lower priority);
- the buffers its scans touch stay small: a few per priority level probed (a walk over
  100k rows would touch hundreds).
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import create_async_engine

from pgqrs import Admin, Consumer, Producer
from pgqrs.repositories import Statement, messages

ROWS = 100_000


PLANS = ("custom", "generic")


async def explain(dsn: str, statement: Statement, plan: str = "custom",
                  **params: Any) -> dict[str, Any]:
    """EXPLAIN ANALYZE ``statement`` with ``params`` (in a transaction rolled back).

    ``plan="generic"``: the statement is prepared and explained with ``EXPLAIN EXECUTE``
    under ``force_generic_plan`` (its parameters reach it as typed literals, which a
    generic plan does not look at); the test fails unless the server made a generic plan.
    """
    compiled: Any = statement.executable.compile(dialect=postgresql.asyncpg.dialect())
    values = compiled.construct_params(params)
    args = [values[name] for name in compiled.positiontup or []]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE")
        transaction = conn.transaction()
        await transaction.start()
        try:
            if plan == "custom":
                text = await conn.fetchval(
                    f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled}", *args)
            else:
                text = await _explain_generic(conn, str(compiled), args)
        finally:
            await transaction.rollback()
    finally:
        await conn.close()
    return json.loads(text)[0]  # type: ignore[no-any-return]


async def _explain_generic(conn: asyncpg.Connection, sql: str, args: list[Any]) -> str:
    types = [f"{t.schema}.{t.name}" for t in (await conn.prepare(sql)).get_parameters()]
    # EXECUTE takes no $n parameters of its own: each value goes in as a quoted literal.
    literals = [await conn.fetchval(f"SELECT format('%L', $1::{t}) || '::{t}'", value)
                for t, value in zip(types, args, strict=True)]
    await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE claim_plan AS {sql}")
    text: str = await conn.fetchval(
        f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim_plan({', '.join(literals)})")
    made = await conn.fetchrow("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                               "WHERE name = 'claim_plan'")
    assert made is not None and tuple(made) == (1, 0), made
    return text


def buffers(plan: dict[str, Any]) -> int:
    """Buffers the scans of ``pgqrs_messages`` touched (what they read, not what the
    statement then wrote: updating a row adds entries to every index)."""
    return sum(int(n.get("Shared Hit Blocks", 0) + n.get("Shared Read Blocks", 0))
               for n in message_scans(plan))


def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]


def message_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in nodes(plan["Plan"]) if n.get("Relation Name") == "pgqrs_messages"
            and "Scan" in n["Node Type"]]


def check_claim(plan: dict[str, Any], *, claimed: int) -> dict[str, int]:
    scans = message_scans(plan)
    assert scans, plan
    assert all(n["Node Type"] != "Seq Scan" for n in scans), json.dumps(plan, indent=1)
    removed = sum(n.get("Rows Removed by Filter", 0) * n.get("Actual Loops", 1) for n in scans)
    assert plan["Plan"]["Actual Rows"] == claimed, json.dumps(plan, indent=1)
    assert removed <= 5, json.dumps(plan, indent=1)
    # Updating a row reads it through the primary key: a buffer or so per claimed row.
    assert buffers(plan) < 100 + claimed, json.dumps(plan, indent=1)
    return {"removed": removed, "buffers": buffers(plan)}


async def claim_plan(dsn: str, worker_id: int, plan: str, limit: int = 10) -> dict[str, Any]:
    return await explain(dsn, messages._DEQUEUE, plan, p_queue_id=1, p_worker_id=worker_id,
                         p_limit=limit, p_lease=timedelta(seconds=30))


async def check_claims(dsn: str, worker_id: int, *, visible: int) -> None:
    """The claim of 10 under both plans; the generic one also claiming 1 and 50 (one
    generic plan serves every limit: it must stay as good for all of them)."""
    for plan in PLANS:
        check_claim(await claim_plan(dsn, worker_id, plan), claimed=min(visible, 10))
    for limit in (1, 50):
        check_claim(await claim_plan(dsn, worker_id, "generic", limit),
                    claimed=min(visible, limit))


async def fill(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def worker(dsn: str, queue: str) -> int:
    async with Consumer(dsn, queue, "c", 2) as consumer:
        worker_id = await consumer.register()
    await fill(dsn, "UPDATE pgqrs_workers SET status = 'ready'")
    return worker_id


async def test_claim_with_50k_visible(dsn: str, worker: int) -> None:
    await fill(dsn, "INSERT INTO pgqrs_messages (queue_id, payload, vt) SELECT 1, '{}', "
                    "now() - interval '1 min' FROM generate_series(1, 50000)")
    await check_claims(dsn, worker, visible=50000)


async def test_claim_with_100k_delayed_queued_ahead_of_the_visible(dsn: str,
                                                                   worker: int) -> None:
    # Lower ids than every visible message: a walk in id order would pass them all.
    await fill(dsn,
               f"INSERT INTO pgqrs_messages (queue_id, payload, vt) SELECT 1, '{{}}', "
               f"now() + interval '7 days' FROM generate_series(1, {ROWS})",
               "INSERT INTO pgqrs_messages (queue_id, payload, vt) SELECT 1, '{}', "
               "now() - interval '1 s' FROM generate_series(1, 50)")
    await check_claims(dsn, worker, visible=50)


async def test_claim_with_leased_and_higher_priority_delayed_ahead(dsn: str,
                                                                  worker: int) -> None:
    # Leased rows and, on higher levels, scheduled ones: the claim probes each level once.
    await fill(dsn,
               f"INSERT INTO pgqrs_messages (queue_id, payload, vt, priority, read_ct, "
               f"consumer_worker_id) SELECT 1, '{{}}', now() + interval '5 min', 0, 1, "
               f"{worker} FROM generate_series(1, {ROWS // 2})",
               f"INSERT INTO pgqrs_messages (queue_id, payload, vt, priority) SELECT 1, "
               f"'{{}}', now() + interval '1 day', (i % 5) + 1 FROM generate_series(1, "
               f"{ROWS // 2}) i",
               "INSERT INTO pgqrs_messages (queue_id, payload, vt) SELECT 1, '{}', "
               "now() - interval '1 s' FROM generate_series(1, 20)")
    await check_claims(dsn, worker, visible=20)


async def test_claim_with_many_groups(dsn: str, worker: int) -> None:
    # 10,000 groups of 10: only the heads are in the claim index.
    await fill(dsn,
               "INSERT INTO pgqrs_messages (queue_id, payload, group_key, parked) "
               "SELECT 1, '{}', 'g' || (i % 10000), i > 10000 FROM generate_series(1, 100000) i",
               "INSERT INTO pgqrs_groups (queue_id, group_key, live) "
               "SELECT 1, 'g' || i, 10 FROM generate_series(0, 9999) i")
    await check_claims(dsn, worker, visible=10000)


async def test_an_empty_queue_with_only_delayed_rows_claims_nothing_cheaply(
        dsn: str, worker: int) -> None:
    await fill(dsn, f"INSERT INTO pgqrs_messages (queue_id, payload, vt, priority) SELECT 1, "
                    f"'{{}}', now() + interval '1 day', i % 3 FROM generate_series(1, {ROWS}) i")
    await check_claims(dsn, worker, visible=0)
    for mode in PLANS:
        plan = await explain(dsn, messages._NEXT_DUE, mode, p_queue_id=1)
        assert all(n["Node Type"] != "Seq Scan" for n in message_scans(plan))
        assert buffers(plan) < 30, json.dumps(plan, indent=1)


async def test_a_paused_queue_claims_nothing_and_scans_nothing(dsn: str, worker: int) -> None:
    await fill(dsn, f"INSERT INTO pgqrs_messages (queue_id, payload, vt) SELECT 1, '{{}}', "
                    f"now() - interval '1 min' FROM generate_series(1, {ROWS})",
               "UPDATE pgqrs_queues SET paused = true")
    for plan in PLANS:
        claim = await claim_plan(dsn, worker, plan, limit=50)
        assert claim["Plan"]["Actual Rows"] == 0
        # The paused check is a one-time filter: the claim index is never read.
        assert buffers(claim) == 0, json.dumps(claim, indent=1)


async def test_handing_a_group_over_reads_one_index_entry(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        await producer.enqueue_batch([{"i": i} for i in range(5000)], group="big")
        await fill(dsn, "INSERT INTO pgqrs_messages (queue_id, payload, group_key, parked) "
                        "SELECT 1, '{}', 'g' || i, false FROM generate_series(1, 20000) i",
                   "INSERT INTO pgqrs_groups (queue_id, group_key, live) "
                   "SELECT 1, 'g' || i, 1 FROM generate_series(1, 20000) i")
        (head,) = [m for m in await c.dequeue(10) if m.group == "big"]
        worker_id = await c.register()
        params = {"p_ids": [head.id], "p_read_cts": [head.read_ct], "p_worker_id": worker_id,
                  "p_channel": "x"}
        plan = await explain(dsn, messages._LEAVE["archive", True], **params)
    scans = message_scans(plan)
    assert all(n["Node Type"] != "Seq Scan" for n in scans), json.dumps(plan, indent=1)
    assert sum(n.get("Rows Removed by Filter", 0) for n in scans) <= 1
    assert buffers(plan) < 30, json.dumps(plan, indent=1)


async def test_the_fused_ack_and_claim_uses_the_primary_key_and_the_claim_index(
        dsn: str, worker: int) -> None:
    # 50k visible messages and 100k leased to this worker; it acknowledges 10 of them.
    await fill(dsn,
               f"INSERT INTO pgqrs_messages (queue_id, payload, vt, read_ct, "
               f"consumer_worker_id) SELECT 1, '{{}}', now() + interval '5 min', 1, {worker} "
               f"FROM generate_series(1, {ROWS})",
               "INSERT INTO pgqrs_messages (queue_id, payload, vt) SELECT 1, '{}', "
               "now() - interval '1 min' FROM generate_series(1, 50000)")
    acked = list(range(1000, 1010))
    for statement, mode in itertools.product(
            (messages._ARCHIVE_AND_DEQUEUE, messages._DELETE_AND_DEQUEUE), PLANS):
        plan = await explain(dsn, statement, mode, p_queue_id=1, p_worker_id=worker, p_limit=10,
                             p_lease=timedelta(seconds=30), p_ids=acked,
                             p_read_cts=[1] * len(acked))
        scans = message_scans(plan)
        assert all(n["Node Type"] != "Seq Scan" for n in scans), json.dumps(plan, indent=1)
        used = {n.get("Index Name") for n in scans}
        assert {"pk_pgqrs_messages", "ix_pgqrs_messages_claim"} <= used, used
        # One row: the acknowledged ids, next to each claimed row.
        assert plan["Plan"]["Actual Rows"] == 10, json.dumps(plan, indent=1)
        removed = sum(n.get("Rows Removed by Filter", 0) * n.get("Actual Loops", 1)
                      for n in scans)
        assert removed <= 5, json.dumps(plan, indent=1)
        assert buffers(plan) < 200, json.dumps(plan, indent=1)


async def _plan_cache_mode(db: Any) -> str:
    async with db.transaction() as conn:
        return str((await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar_one())


async def test_only_a_workers_own_connections_plan_generically(dsn: str, queue: str) -> None:
    async with (Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "c", 2) as consumer,
                Consumer(dsn, queue, "c", 3, pgbouncer=True) as bounced,
                Consumer(dsn, queue, "c", 5, generic_plans=False) as opted_out,
                Admin(dsn) as admin):
        await producer.enqueue_batch([{"i": i} for i in range(30)])
        for _ in range(12):
            await consumer.archive_batch(await consumer.dequeue(1))
        held = consumer._db._held  # type: ignore[attr-defined]
        # The claim was planned once on the held connection, then reused: no custom plan.
        assert await held.driver.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        plans = await held.driver.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'WITH RECURSIVE levels%'")
        assert plans is not None and plans["custom_plans"] == 0, plans
        assert plans["generic_plans"] >= 12, plans
        # Every connection of the worker's pool, not only the held one.
        assert await _plan_cache_mode(consumer._db) == "force_generic_plan"  # type: ignore[attr-defined]
        assert await _plan_cache_mode(producer._db) == "force_generic_plan"  # type: ignore[attr-defined]
        # Not behind pgbouncer (nothing sticks to a server connection there), not Admin's.
        assert await _plan_cache_mode(bounced._db) == "auto"  # type: ignore[attr-defined]
        assert await _plan_cache_mode(admin._db) == "auto"  # type: ignore[attr-defined]
        # A user who turned it off (generic_plans=False, PGQRS_GENERIC_PLANS=false).
        assert await _plan_cache_mode(opted_out._db) == "auto"  # type: ignore[attr-defined]
    # A host's engine is not pgqrs's to reconfigure.
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with Consumer(engine, queue, "c", 4) as hosted:
            await hosted.dequeue(1)
            assert await _plan_cache_mode(hosted._db) == "auto"  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
