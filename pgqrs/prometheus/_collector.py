"""``QueueCollector``: queue and worker state read from the database at scrape time.

prometheus_client calls ``collect()`` synchronously, from whatever thread serves the scrape,
while pgqrs is async. The collector gets its numbers one of two ways:

- **Async path** (``asgi_app``: ``scrape = await collector.scrape()``, then render the
  registry inside ``with collector.serving(scrape):``): the state is read on the running
  event loop, with the host's engine if one was given, and handed to ``collect()`` through
  a context variable for that scrape alone (concurrent scrapes never see each other's).
- **Blocking path** (``pgqrs metrics serve``, ``prometheus_client.start_http_server``,
  any WSGI or threaded exposition): ``collect()`` runs the query itself in a private event
  loop (``asyncio.run``), on an engine without a pool (``NullPool``, one connection per
  scrape): SQLAlchemy's documented way to use one engine from several event loops. Only a
  collector built from a DSN can do this; one lent an ``AsyncEngine`` cannot use it outside
  that engine's loop, and says so.

A scrape that cannot read the database still answers: ``pgqrs_up`` is 0 and the failure is
logged, so the other metrics of the same registry (the consume loop's, the process's) keep
flowing and an alert can key on ``pgqrs_up == 0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pgqrs import _validation, errors
from pgqrs._db import Database
from pgqrs.prometheus import _query
from pgqrs.prometheus._query import QueueState, Snapshot
from pgqrs.settings import Settings

log = logging.getLogger("pgqrs")

_current: contextvars.ContextVar[Scrape | None] = contextvars.ContextVar(
    "pgqrs_prometheus_snapshot", default=None)


class QueueCollector:
    """A prometheus_client collector of pgqrs's queue state, read at scrape time.

    Every scrape runs one statement (see ``pgqrs.prometheus._query``) and exports, per
    queue: ``pgqrs_messages_pending``, ``_leased``, ``_delayed``, ``_dead`` (the states of
    ``Admin.queue_metrics`` and the dashboard: one definition, ``pgqrs.repositories._states``)
    and ``_archived``, ``pgqrs_queue_oldest_pending_age_seconds``,
    ``pgqrs_queue_paused``; per queue and status:
    ``pgqrs_workers``, plus ``pgqrs_workers_stale``; and ``pgqrs_schema_info{revision}``,
    ``pgqrs_up`` and ``pgqrs_scrape_duration_seconds``.

    Example:
        registry = CollectorRegistry()
        registry.register(QueueCollector("postgresql://localhost/mydb"))
        prometheus_client.start_http_server(9464, registry=registry)

    Args:
        dsn: a PostgreSQL URL (the collector opens one connection per scrape and keeps
            none) or the application's ``AsyncEngine`` (then scrape through ``asgi_app``,
            on the engine's event loop).
        schema: schema of the pgqrs tables (default ``public`` or ``PGQRS_SCHEMA``).
        archive_exact_limit: archived rows per queue counted exactly; a larger queue's
            archive is estimated from the planner's statistics (the count would cost a scan
            of all its rows on every scrape).
        **options: other ``Settings`` options (``statement_timeout``, ``stale_after``, ...).

    Raises:
        ConfigurationError: a bad option, DSN or schema name.
    """

    def __init__(self, dsn: str | AsyncEngine, *, schema: str | None = None,
                 archive_exact_limit: int = _query.DEFAULT_EXACT_LIMIT,
                 **options: Any) -> None:
        if options.pop("max_read_ct", None) is not None:
            # Before 0.2.0 the collector judged "dead" by its own threshold; a queue owns it now.
            warnings.warn("QueueCollector(max_read_ct=...) is ignored: dead letters are "
                          "counted by each queue's own max_read_ct", DeprecationWarning,
                          stacklevel=2)
        self.settings = Settings.build(schema=schema, **options)
        self.archive_exact_limit = _validation.positive_int("archive_exact_limit",
                                                            archive_exact_limit)
        self._db = Database(dsn, self.settings, pooled=False)
        self._warned = threading.Event()

    def __repr__(self) -> str:
        return f"QueueCollector(schema={self.settings.schema!r})"

    async def snapshot(self) -> Snapshot:
        """Read the queue state now, on the running event loop (one statement).

        Raises:
            SchemaNotInstalledError: the pgqrs tables are missing.
            DatabaseUnavailableError: the database cannot be reached.
            DatabaseError: any other database failure.
        """
        async with self._db.transaction() as conn:
            assert isinstance(conn, AsyncConnection)
            return await _query.read(
                conn, self.settings.schema, stale_after=self.settings.stale_threshold,
                exact_limit=self.archive_exact_limit)

    async def scrape(self) -> Scrape:
        """Read the state for one scrape on the running loop; a failure is logged, not raised."""
        started = time.perf_counter()
        try:
            snapshot = await self.snapshot()
        except errors.PgqrsError as exc:
            error = errors.redact(str(exc))
            log.warning("pgqrs metrics: cannot read the queue state: %s", error)
            return Scrape(None, time.perf_counter() - started, error)
        return Scrape(snapshot, time.perf_counter() - started)

    @contextlib.contextmanager
    def serving(self, scrape: Scrape) -> Iterator[None]:
        """Make ``collect()`` export ``scrape`` within this context (this task alone)."""
        token = _current.set(scrape)
        try:
            yield
        finally:
            _current.reset(token)

    def collect(self) -> Iterable[Metric]:
        """Export this scrape's state: read now, unless the async path already did."""
        scrape = _current.get()
        if scrape is None:
            scrape = self._scrape_blocking()
        return _families(scrape)

    def describe(self) -> Iterable[Metric]:
        """The metric names, without touching the database (used at registration)."""
        return _families(None)

    async def close(self) -> None:
        """Dispose the collector's own engine (a lent engine is left alone)."""
        await self._db.dispose()

    def _scrape_blocking(self) -> Scrape:
        if not self._db.owned:
            if not self._warned.is_set():
                self._warned.set()
                log.error("pgqrs metrics: a QueueCollector given an AsyncEngine reads the "
                          "database only on that engine's event loop: serve it with "
                          "pgqrs.prometheus.asgi_app(engine), or build it from a DSN")
            return Scrape(None, 0.0, "a collector given an AsyncEngine cannot read here")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.scrape())
        # Called synchronously from inside a running loop (a sync exposition handler in an
        # async app): that loop cannot be awaited here, so the read gets a loop of its own
        # in a helper thread. It blocks this loop for one query; asgi_app does not.
        result: list[Scrape] = []
        helper = threading.Thread(target=lambda: result.append(asyncio.run(self.scrape())),
                                  name="pgqrs-metrics-scrape")
        helper.start()
        helper.join()
        return result[0] if result else Scrape(None, 0.0)


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one scrape read, and how long the read took."""

    snapshot: Snapshot | None
    """None when the read failed."""
    duration: float
    error: str | None = None
    """Why the read failed (passwords redacted)."""


def _families(scrape: Scrape | None) -> list[Metric]:
    """The metric families of ``scrape``; without one, the names alone (``describe``)."""
    snapshot = scrape.snapshot if scrape is not None else None
    queues = snapshot.queues if snapshot is not None else []
    families: list[Metric] = []
    for name, doc, value in _PER_QUEUE:
        family = GaugeMetricFamily(name, doc, labels=["queue"])
        for q in queues:
            family.add_metric([q.queue_name], value(q))
        families.append(family)
    workers = GaugeMetricFamily(
        "pgqrs_workers", "Registered workers (producers and consumers) by queue and status.",
        labels=["queue", "status"])
    for q in queues:
        for status in _query.WORKER_STATUSES:
            workers.add_metric([q.queue_name, status], q.workers[status])
    families.append(workers)
    info = InfoMetricFamily("pgqrs_schema", "Alembic revision of the pgqrs schema.",
                            labels=["revision"])
    if snapshot is not None and snapshot.revision is not None:
        info.add_metric([snapshot.revision], {})
    families.append(info)
    families.append(GaugeMetricFamily(
        "pgqrs_up", "1 if the scrape read the pgqrs tables, 0 if it could not.",
        value=None if scrape is None else float(snapshot is not None)))
    families.append(GaugeMetricFamily(
        "pgqrs_scrape_duration_seconds", "Seconds the scrape's query took.",
        value=None if scrape is None else scrape.duration))
    return families


_PER_QUEUE: tuple[tuple[str, str, Callable[[QueueState], float]], ...] = (
    ("pgqrs_messages_pending",
     "Messages claimable now (visible, not parked behind their group's head, deliveries "
     "left).",
     lambda q: q.pending),
    ("pgqrs_messages_leased", "Messages held by a consumer under a running lease.",
     lambda q: q.leased),
    ("pgqrs_messages_delayed",
     "Messages not visible yet and held by nobody (delayed enqueue, retry backoff, or "
     "parked behind their group's head).",
     lambda q: q.delayed),
    ("pgqrs_messages_dead",
     "Dead letters still in the live queue (the queue's max_read_ct deliveries, lease "
     "over), waiting for Admin.dlq().", lambda q: q.dead),
    ("pgqrs_messages_archived",
     "Rows in the queue's archive (successes and dead letters): exact up to "
     "archive_exact_limit, the planner's estimate above.", lambda q: q.archived),
    ("pgqrs_queue_oldest_pending_age_seconds",
     "Seconds the oldest claimable message has been claimable (0 when none is).",
     lambda q: q.oldest_pending_age),
    ("pgqrs_queue_paused", "1 while the queue is paused (no consumer claims), else 0.",
     lambda q: float(q.paused)),
    ("pgqrs_workers_stale",
     "Ready or suspended workers whose heartbeat is older than the stale threshold.",
     lambda q: q.stale_workers),
)
"""The per-queue gauges: name, help, and how to read the value from a ``QueueState``."""


__all__ = ["QueueCollector", "QueueState", "Scrape", "Snapshot"]
