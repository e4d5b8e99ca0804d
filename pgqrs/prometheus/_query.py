"""The one statement a scrape runs, and the snapshot it returns.

Everything the queue-state collector exports comes from a single ``SELECT`` (one round
trip, one consistent snapshot): per-queue message counts from one ``GROUP BY`` pass over
``pgqrs_messages``, worker counts from one pass over ``pgqrs_workers``, and the schema
revision. One row per queue, or one row with no queue when there are none.

The archive is the table that grows without bound, so it is never counted in full on a
large installation. Per queue, an index-only scan of ``(queue_id, id)`` counts at most
``exact_limit`` rows (a ``LIMIT`` inside the count), which costs the same whether the
archive holds a thousand rows or a billion. Below the limit the count is exact. A queue
that reaches the limit is estimated from the planner's statistics instead: the table's
rows now (``pg_class.reltuples / relpages``, scaled to the table's current size, as the
planner itself does) times the queue's share in ``pg_stats.most_common_freqs`` for
``queue_id``, never below the limit. Until ``ANALYZE`` has run on the archive there is
nothing to estimate from, and the count is exact (autovacuum analyses a table soon after
it grows). This is PostgREST's "estimated count": exact when cheap, estimated when not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from pgqrs.models import messages_table, queues_table
from pgqrs.repositories import _states

DEFAULT_EXACT_LIMIT = 100_000
"""Archived rows per queue counted exactly before the planner's estimate takes over."""

WORKER_STATUSES = ("ready", "suspended", "stopped")

# The schema is a validated identifier (Settings), quoted again here; everything else is a
# bound parameter. ``now()`` is the transaction's time: every age below uses the one clock.
# The per-state counts ({counts}) are ``pgqrs.repositories._states``'s, the very expressions
# ``Admin.queue_metrics`` and the dashboard use, rendered once (see ``_COUNTS``): "dead" is
# judged by each queue's own max_read_ct (joined from its row), and a message parked behind
# its group's head is "delayed", as everywhere else.
_SQL = """
WITH live AS (
    SELECT m.queue_id, {counts}
    FROM {s}.pgqrs_messages m
    JOIN {s}.pgqrs_queues q ON q.id = m.queue_id
    GROUP BY m.queue_id
), workers AS (
    SELECT w.queue_id,
           count(*) FILTER (WHERE w.status = 'ready') AS ready,
           count(*) FILTER (WHERE w.status = 'suspended') AS suspended,
           count(*) FILTER (WHERE w.status = 'stopped') AS stopped,
           count(*) FILTER (WHERE w.status <> 'stopped'
                            AND w.heartbeat_at < now() - make_interval(secs => :stale_after))
               AS stale
    FROM {s}.pgqrs_workers w
    WHERE w.queue_id IS NOT NULL
    GROUP BY w.queue_id
), archive_rows AS (
    -- The planner's row count for the archive as it is now; NULL before any ANALYZE.
    SELECT CASE WHEN c.reltuples >= 0 AND c.relpages > 0
                THEN c.reltuples / c.relpages
                     * (pg_relation_size(c.oid) / current_setting('block_size')::float8)
           END AS n
    FROM pg_class c
    WHERE c.oid = to_regclass(:archive_table)
), archive_mcv AS (
    -- Each frequent queue's share of the archive, from ANALYZE's sample.
    SELECT v.queue_id, v.share
    FROM pg_stats st,
         unnest(st.most_common_vals::text::bigint[], st.most_common_freqs)
             AS v(queue_id, share)
    WHERE st.schemaname = :schema AND st.tablename = 'pgqrs_archive'
      AND st.attname = 'queue_id' AND NOT st.inherited
)
SELECT v.revision, now() AS now, q.queue_name, q.paused,
       coalesce(l.pending, 0) AS pending, coalesce(l.leased, 0) AS leased,
       coalesce(l.delayed, 0) AS delayed, coalesce(l.dead, 0) AS dead,
       extract(epoch FROM now() - l.oldest_pending)::float8 AS oldest_pending_age,
       coalesce(w.ready, 0) AS ready, coalesce(w.suspended, 0) AS suspended,
       coalesce(w.stopped, 0) AS stopped, coalesce(w.stale, 0) AS stale,
       CASE
           WHEN capped.n < :exact_limit THEN capped.n
           WHEN (SELECT n FROM archive_rows) IS NOT NULL THEN greatest(
               :exact_limit,
               round((SELECT n FROM archive_rows) * coalesce(
                   (SELECT share FROM archive_mcv WHERE archive_mcv.queue_id = q.id),
                   -- Not among the frequent values: an equal part of what they leave.
                   (1 - coalesce((SELECT sum(share) FROM archive_mcv), 0))
                   / greatest((SELECT count(*) FROM {s}.pgqrs_queues)
                              - (SELECT count(*) FROM archive_mcv), 1)))::bigint)
           ELSE (SELECT count(*) FROM {s}.pgqrs_archive a WHERE a.queue_id = q.id)
       END AS archived,
       capped.n >= :exact_limit AND (SELECT n FROM archive_rows) IS NOT NULL
           AS archived_estimated
FROM (SELECT (SELECT version_num FROM {s}.pgqrs_alembic_version LIMIT 1) AS revision) v
LEFT JOIN {s}.pgqrs_queues q ON true
LEFT JOIN live l ON l.queue_id = q.id
LEFT JOIN workers w ON w.queue_id = q.id
LEFT JOIN LATERAL (
    SELECT count(*) AS n
    FROM (SELECT 1 FROM {s}.pgqrs_archive a WHERE a.queue_id = q.id LIMIT :exact_limit) t
) capped ON true
ORDER BY q.queue_name
"""


def _render_counts() -> str:
    """The state counts of ``_states``, as SQL over the aliases ``m`` and ``q`` above."""
    m, q = messages_table.alias("m"), queues_table.alias("q")
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    # The expressions have no bound values (now() and columns only): literal_binds is a
    # guard that the rendering stays a plain SQL fragment.
    return ",\n           ".join(
        str(column.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        + f" AS {column.name}" for column in _states.counts(m, q.c.max_read_ct))


_COUNTS = _render_counts()


@dataclass(frozen=True, slots=True)
class QueueState:
    """One queue as a scrape saw it."""

    queue_name: str
    pending: int
    """Claimable now (visible, not parked behind its group's head, deliveries left)."""
    leased: int
    """Held by a consumer under a running lease."""
    delayed: int
    """Not yet visible and held by nobody (delayed enqueue, retry backoff, or parked
    behind its group's head)."""
    dead: int
    """Delivered the queue's ``max_read_ct`` times, lease over: waiting for ``Admin.dlq()``."""
    archived: int
    """Rows in the archive (successes and dead letters); see ``archived_estimated``."""
    archived_estimated: bool
    """True when ``archived`` is the planner's estimate rather than an exact count."""
    oldest_pending_age: float
    """Seconds the oldest claimable message has been claimable; 0 when none is."""
    workers: dict[str, int]
    """Registered workers (producers and consumers) by status."""
    stale_workers: int
    """Ready or suspended workers whose heartbeat is older than the stale threshold."""
    paused: bool = False
    """True while the queue is paused (no consumer claims from it)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape read: every queue, and the schema's Alembic revision."""

    revision: str | None
    queues: list[QueueState]


def statement(schema: str, quote: Any) -> Any:
    """The scrape's statement for ``schema`` (``quote``: the dialect's identifier quoting)."""
    return text(_SQL.format(s=quote(schema), counts=_COUNTS))


async def read(conn: AsyncConnection, schema: str, *, stale_after: float,
               exact_limit: int) -> Snapshot:
    """Run the statement on ``conn`` and shape its rows (one round trip)."""
    quote = conn.dialect.identifier_preparer.quote
    stmt = statement(schema, quote)
    rows = (await conn.execute(stmt, {
        "stale_after": float(stale_after),
        "exact_limit": exact_limit, "schema": schema,
        "archive_table": f"{quote(schema)}.pgqrs_archive",
    })).mappings().all()
    revision = rows[0]["revision"] if rows else None
    queues = [
        QueueState(
            queue_name=r["queue_name"], pending=r["pending"], leased=r["leased"],
            delayed=r["delayed"], dead=r["dead"], archived=int(r["archived"]),
            archived_estimated=bool(r["archived_estimated"]),
            oldest_pending_age=max(r["oldest_pending_age"] or 0.0, 0.0),
            workers={s: r[s] for s in WORKER_STATUSES}, stale_workers=r["stale"],
            paused=bool(r["paused"]),
        )
        for r in rows if r["queue_name"] is not None
    ]
    return Snapshot(revision, queues)
