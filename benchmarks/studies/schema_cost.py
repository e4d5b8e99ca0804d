"""What pgqrs's statements cost the server next to the minimal design's, statement by
statement: where ``same-SQL floor / minimal floor`` (the schema's share of
``pgqrs / minimal``) goes.

Usage (from the repository root)::

    python -m benchmarks.studies.schema_cost [--calls 400] [--dsn URL] [--pg-tmpdir DIR]

On a fresh database of each schema it runs, ``calls`` times each, under ``EXPLAIN
(ANALYZE, BUFFERS, WAL, FORMAT JSON)``, what each benchmark row sends:

- single enqueue and a 100-message batch enqueue: pgqrs's statements as pgqrs sends
  them (with their ``pg_notify``) and again without it, as the same-SQL floor sends
  them; once more without the lookup and lock of the queue row that guards against
  enqueueing into a queue being deleted (what that guard costs); the minimal floor's
  INSERTs;
- claim 1 + acknowledge 1, and claim 50 + acknowledge 50: pgqrs's claim (with the
  worker-is-ready check) and archive move; the minimal floor's ``UPDATE … SKIP LOCKED``
  and ``DELETE … RETURNING`` into its archive;

(``--levers``: pgqrs only, on the schema before revision pgqrs_0005 and then with its
levers applied one at a time) and prints per statement the median server execution
time (of it: time in triggers, i.e. foreign-key checks), WAL records, WAL bytes and
full-page images, and shared buffers dirtied, per call. The statements run one at a
time in autocommit, so commit costs (WAL flush, and NOTIFY's global lock at commit,
which serialises concurrent producers) are not in these figures; the benchmark rows
have them. It also lists each table's indexes, foreign keys and triggers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from benchmarks import minimal, pgqrs_sql, scenarios
from benchmarks.api import encode
from benchmarks.server import Databases, default_tmpdir, server
from benchmarks.sides import FloorConsumer, FloorProducer

EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) "


@dataclass
class Cost:
    """Medians per call of one statement."""

    ms: float
    trigger_ms: float
    wal_records: float
    wal_bytes: float
    wal_fpi: float
    dirtied: float

    @classmethod
    def of(cls, plans: Sequence[dict[str, Any]]) -> Cost:
        def med(f: Callable[[dict[str, Any]], float]) -> float:
            return statistics.median(f(p) for p in plans)

        return cls(ms=med(lambda p: p["Execution Time"]),
                   trigger_ms=med(lambda p: sum(t["Time"] for t in p.get("Triggers", []))),
                   wal_records=med(lambda p: p["Plan"].get("WAL Records", 0)),
                   wal_bytes=med(lambda p: p["Plan"].get("WAL Bytes", 0)),
                   wal_fpi=med(lambda p: p["Plan"].get("WAL FPI", 0)),
                   dirtied=med(lambda p: p["Plan"].get("Shared Dirtied Blocks", 0)))


async def _explain(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    text = await conn.fetchval(EXPLAIN + sql, *args)
    plan: dict[str, Any] = json.loads(text)[0]
    return plan


async def _pgqrs(dsn: str, calls: int) -> dict[str, Cost]:
    producer = await FloorProducer.open(dsn, 0)
    consumer = await FloorConsumer.open(dsn, 0, listen=False)
    conn = producer.conn
    # The channel is any name: nobody listens here, and NOTIFY's cost is paid at commit.
    fixed = {"p_queue_id": producer.queue_id, "p_delay": timedelta(0),
             "p_worker_id": producer.worker_id, "p_channel": "pgqrs_schema_cost",
             "p_priority": 0, "p_headers": None}
    full_one = pgqrs_sql.compiled("_ENQUEUE")
    full_many = pgqrs_sql.compiled("_ENQUEUE_BATCH")
    one_args = full_one.binder("p_payload", **fixed)
    many_args = full_many.binder("p_payloads", **fixed)
    out: dict[str, Cost] = {}
    batch = [encode(scenarios.payload(i)) for i in range(100)]
    n = iter(range(10**9))
    out["enqueue 1 (pgqrs, with pg_notify)"] = Cost.of(
        [await _explain(conn, full_one.sql, *one_args(encode(scenarios.payload(next(n)))))
         for _ in range(calls)])
    out["enqueue 1 (same SQL, no pg_notify)"] = Cost.of(
        [await _explain(conn, pgqrs_sql.enqueue().sql,
                        *producer._one_args(encode(scenarios.payload(next(n)))))
         for _ in range(calls)])
    out["enqueue 100 (pgqrs, with pg_notify)"] = Cost.of(
        [await _explain(conn, full_many.sql, *many_args(batch)) for _ in range(calls // 10)])
    out["enqueue 100 (same SQL, no pg_notify)"] = Cost.of(
        [await _explain(conn, pgqrs_sql.enqueue_batch().sql, *producer._many_args(batch))
         for _ in range(calls // 10)])
    # What the guard that replaced the queue foreign key costs (pgqrs_0005): the same
    # statements with the locked queue lookup replaced by the bare parameter.
    bare_one, bare_many = _unguarded(pgqrs_sql.enqueue().sql), \
        _unguarded(pgqrs_sql.enqueue_batch().sql)
    if bare_one != pgqrs_sql.enqueue().sql:
        out["enqueue 1 (same SQL, no queue lock)"] = Cost.of(
            [await _explain(conn, bare_one,
                            *producer._one_args(encode(scenarios.payload(next(n)))))
             for _ in range(calls)])
        out["enqueue 100 (same SQL, no queue lock)"] = Cost.of(
            [await _explain(conn, bare_many, *producer._many_args(batch))
             for _ in range(calls // 10)])
    await conn.execute("ANALYZE pgqrs_messages")
    # The held messages and the delivery each was claimed at (the ack's fence).
    held = "SELECT id, read_ct FROM pgqrs_messages WHERE consumer_worker_id = $1"
    for size in (1, 50):
        claims, acks = [], []
        for _ in range(calls if size == 1 else calls // 10):
            claims.append(await _explain(consumer.conn, pgqrs_sql.claim().sql,
                                         *consumer._claim_args(size)))
            rows = await consumer.conn.fetch(held, consumer.worker_id)
            consumer._read_cts.update((r["id"], r["read_ct"]) for r in rows)
            ids = [r["id"] for r in rows]
            acks.append(await _explain(consumer.conn, pgqrs_sql.archive().sql,
                                       *consumer._archive_args(ids)))
        out[f"claim {size}"] = Cost.of(claims)
        out[f"ack {size} (archive move)"] = Cost.of(acks)
    await producer.close()
    await consumer.close()
    return out


_QUEUE_LOCK = re.compile(r"\(SELECT (\S+)\.pgqrs_queues\.id\s+FROM \S+\s+WHERE \S+ = "
                         r"\$1::BIGINT FOR KEY SHARE\)")


def _unguarded(sql: str) -> str:
    """``sql`` with the queue row's lookup and lock (``_groups.locked_queue``) taken out."""
    return _QUEUE_LOCK.sub("$1::BIGINT", sql)


async def _minimal(dsn: str, calls: int) -> dict[str, Cost]:
    conn = await asyncpg.connect(dsn)
    out: dict[str, Cost] = {}
    batch = [encode(scenarios.payload(i)) for i in range(100)]
    out["enqueue 1"] = Cost.of([await _explain(conn, minimal.ENQUEUE,
                                               encode(scenarios.payload(i)))
                                for i in range(2 * calls)])
    out["enqueue 100"] = Cost.of([await _explain(conn, minimal.ENQUEUE_BATCH, batch)
                                  for _ in range(calls // 5)])
    await conn.execute("ANALYZE minimal_queue")
    lease = timedelta(seconds=30)
    held = ("SELECT id FROM minimal_queue WHERE read_ct > 0 AND vt > now() "
            "ORDER BY id")
    for size in (1, 50):
        claims, acks = [], []
        for _ in range(calls if size == 1 else calls // 10):
            claims.append(await _explain(conn, minimal.CLAIM, size, lease))
            ids = [r["id"] for r in await conn.fetch(held)]
            acks.append(await _explain(conn, minimal.ACK, ids))
        out[f"claim {size}"] = Cost.of(claims)
        out[f"ack {size}"] = Cost.of(acks)
    await conn.close()
    return out


CATALOG = """
SELECT c.relname AS table_name,
       (SELECT string_agg(i.relname, ', ' ORDER BY i.relname) FROM pg_index x
          JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = c.oid) AS indexes,
       (SELECT count(*) FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'f')
         AS foreign_keys,
       (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
         AS triggers
FROM pg_class c WHERE c.relname = ANY($1::text[]) ORDER BY c.relname
"""


async def _catalog(dsn: str, tables: list[str]) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(CATALOG, tables)
    finally:
        await conn.close()
    return [f"  {r['table_name']}: {r['foreign_keys']} foreign keys, {r['triggers']} "
            f"triggers; indexes: {r['indexes']}" for r in rows]


def _table(costs: dict[str, Cost]) -> str:
    lines = ["| statement | server ms | of it triggers ms | WAL records | WAL bytes "
             "| WAL FPI | buffers dirtied |", "|---|--:|--:|--:|--:|--:|--:|"]
    lines += [f"| {name} | {c.ms:.3f} | {c.trigger_ms:.3f} | {c.wal_records:g} "
              f"| {c.wal_bytes:,.0f} | {c.wal_fpi:g} | {c.dirtied:g} |"
              for name, c in costs.items()]
    return "\n".join(lines)


# ``--levers``: the schema before revision pgqrs_0005, then its levers undone one at a
# time (cumulatively), each on a fresh database: what each lever is worth alone.
_FK = ("ALTER TABLE pgqrs_messages ADD CONSTRAINT {0} FOREIGN KEY ({1}) REFERENCES {2} (id)"
       "{3}")
LEVERS: list[tuple[str, list[str]]] = [
    ("pgqrs_0004 schema (3 foreign keys, 3 + 5 secondary indexes)", [
        _FK.format("fk_q", "queue_id", "pgqrs_queues", ""),
        _FK.format("fk_p", "producer_worker_id", "pgqrs_workers", " ON DELETE SET NULL"),
        _FK.format("fk_c", "consumer_worker_id", "pgqrs_workers", " ON DELETE SET NULL"),
        "CREATE INDEX ix_mc ON pgqrs_messages (consumer_worker_id)",
        "CREATE INDEX ix_mp ON pgqrs_messages (producer_worker_id)",
        "DROP INDEX ix_pgqrs_messages_held",
        "CREATE INDEX ix_ao ON pgqrs_archive (original_msg_id)",
        "CREATE INDEX ix_ap ON pgqrs_archive (producer_worker_id)",
        "CREATE INDEX ix_ac ON pgqrs_archive (consumer_worker_id)",
    ]),
    ("- the 3 foreign keys", [
        "ALTER TABLE pgqrs_messages DROP CONSTRAINT fk_q, DROP CONSTRAINT fk_p, "
        "DROP CONSTRAINT fk_c",
    ]),
    ("- the 2 worker indexes of pgqrs_messages, + the partial held index", [
        "DROP INDEX ix_mc", "DROP INDEX ix_mp",
        "CREATE INDEX ix_pgqrs_messages_held ON pgqrs_messages (consumer_worker_id) "
        "WHERE consumer_worker_id IS NOT NULL",
    ]),
    ("- 3 of the archive's 5 secondary indexes (= head)", [
        "DROP INDEX ix_ao", "DROP INDEX ix_ap", "DROP INDEX ix_ac",
    ]),
    ("(for scale) head without the partial held index", ["DROP INDEX ix_pgqrs_messages_held"]),
]


async def _levers(dsn: str, calls: int) -> None:
    pgqrs_dbs = Databases(dsn)
    await pgqrs_dbs.create_template()
    applied: list[str] = []
    try:
        for title, statements in LEVERS:
            applied += statements
            async with pgqrs_dbs.fresh() as db:
                conn = await asyncpg.connect(db)
                try:
                    for statement in applied:
                        await conn.execute(statement)
                finally:
                    await conn.close()
                print(f"\n## {title}\n")
                print(_table(await _pgqrs(db, calls)))
    finally:
        await pgqrs_dbs.drop_template()


async def _run(dsn: str, calls: int) -> None:
    pgqrs_dbs = Databases(dsn)
    minimal_dbs = Databases(dsn, "minimal", minimal.MinimalSide.install)
    await pgqrs_dbs.create_template()
    await minimal_dbs.create_template()
    try:
        async with pgqrs_dbs.fresh() as db:
            print("\n## pgqrs schema (per call, medians)\n")
            print(_table(await _pgqrs(db, calls)))
            print("\n" + "\n".join(await _catalog(db, ["pgqrs_messages", "pgqrs_archive"])))
        async with minimal_dbs.fresh() as db:
            print("\n## minimal design (per call, medians)\n")
            print(_table(await _minimal(db, calls)))
            print("\n" + "\n".join(await _catalog(db, ["minimal_queue", "minimal_archive"])))
    finally:
        await pgqrs_dbs.drop_template()
        await minimal_dbs.drop_template()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.studies.schema_cost``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.schema_cost",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--dsn", default=os.environ.get("PGQRS_DSN"))
    parser.add_argument("--pg-tmpdir", default=default_tmpdir())
    parser.add_argument("--levers", action="store_true",
                        help="pgqrs only: the schema before pgqrs_0005, then each of its "
                             "levers in turn")
    args = parser.parse_args(argv)
    with server(args.dsn, tmpdir=args.pg_tmpdir) as pg:
        if args.levers:
            print(f"# server-side cost per statement, lever by lever ({pg.description})")
            asyncio.run(_levers(pg.dsn, args.calls))
        else:
            print(f"# server-side cost per statement, pgqrs vs minimal design "
                  f"({pg.description})")
            asyncio.run(_run(pg.dsn, args.calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
