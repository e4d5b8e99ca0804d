"""The dashboard application: its routes, its pages, and ``app()`` that builds it.

Reads go through ``Admin`` where it has what a page needs (queues, metrics, worker
health, single rows) and through ``DashboardRepository`` for keyset-paged lists and the
throughput chart, in one read-only transaction per page. Writes are in ``_actions``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pgqrs import errors
from pgqrs._db import Database
from pgqrs.admin import Admin
from pgqrs.dashboard import _actions, _security
from pgqrs.dashboard._queries import MESSAGE_STATES, Cursor, DashboardRepository, Page
from pgqrs.dashboard._render import Renderer, Site, chart
from pgqrs.settings import Settings
from pgqrs.types import QueueInfo, WorkerStatus

ROUTES = {
    "overview": "/",
    "queue": "/queue",
    "message": "/message",
    "archived": "/archived",
    "dead_letters": "/dead-letters",
    "workers": "/workers",
    "replay": "/dead-letters/replay",
    "delete_dead_letter": "/dead-letters/delete",
    "replay_all": "/dead-letters/replay-all",
    "worker_status": "/workers/status",
    "delete_worker": "/workers/delete",
    "pause_queue": "/queue/pause",
    "resume_queue": "/queue/resume",
    "purge_archive": "/queue/purge-archive",
}
"""Route name -> path inside the dashboard; links are built from this table only."""

BUCKETS = 30
BUCKET_SECONDS = 30
"""The throughput chart: 30 bars of 30 seconds, the last 15 minutes."""
COUNT_CAP = 10_000
"""Dead letters are counted up to this many ("10,000+"), so a count never scans it all."""
MAX_PER_PAGE = 1000
STATEMENT_TIMEOUT_MS = 10_000
"""A page's queries are cancelled after this long: the dashboard never hogs the database."""
_KNOWN_QUEUE_FIELDS = {"id", "queue_name", "created_at"}


@dataclass(frozen=True, slots=True)
class Pager:
    """Links to the first, previous and next pages of a list (None: no such page)."""

    first: str | None
    previous: str | None
    next: str | None


def database_label(target: str | AsyncEngine) -> str:
    """The database as shown on every page: no password, no query string."""
    try:
        url = make_url(target) if isinstance(target, str) else target.url
        shown = url.set(password=None, query={}).render_as_string(hide_password=True)
    except Exception:  # any unparsable form: show nothing of it rather than risk a secret
        return "(database)"
    return errors.redact(shown)


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise errors.ValidationError(f"{name} must be a whole number") from None
    if not 0 < value < 2**63:
        raise errors.ValidationError(f"{name} is out of range")
    return value


def _policy(info: QueueInfo) -> dict[str, Any]:
    """The queue's rules: whatever ``QueueInfo`` carries beyond its identity."""
    return {f.name: getattr(info, f.name) for f in dataclasses.fields(info)
            if f.name not in _KNOWN_QUEUE_FIELDS}


Handler = Callable[[Request], Awaitable[Response]]


class Dashboard:
    """One dashboard: its database, its Admin, its pages."""

    def __init__(self, target: str | AsyncEngine, *, schema: str | None, actions: bool,
                 refresh: int, per_page: int, secret: bytes) -> None:
        self.settings = Settings.build(schema=schema)
        # From a DSN, a small pool of its own (a page makes a few short transactions; a
        # connection each would cost more than the page), closed on the app's shutdown.
        self.db = Database(target, self.settings)
        self.admin = Admin(self.db.engine, schema=self.settings.schema)
        self.repo = DashboardRepository(self.settings.schema)
        self.per_page = per_page
        self.site = Site(routes=ROUTES, actions=actions, refresh=refresh,
                         database=database_label(target), policy_actions=_actions.POLICY_ACTIONS,
                         purge_archive=_actions.PURGE_ARCHIVE)
        self.csrf = _security.Csrf(secret)
        self.flash = _security.Flash(secret)
        self.renderer = Renderer(self.site, self.csrf, self.flash)
        self.actions = _actions.ActionHandler(
            _actions.Operations(self.admin, self.db, self.repo), self.renderer, self.csrf,
            self.flash, enabled=actions)

    async def close(self) -> None:
        """Dispose the engine if the dashboard created it."""
        await self.db.dispose()

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """One read-only transaction with a statement timeout, for a page's queries."""
        async with self.db.transaction() as conn:
            assert isinstance(conn, AsyncConnection)
            await conn.execute(text("SET TRANSACTION READ ONLY"))
            await conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            yield conn

    # -- helpers ---------------------------------------------------------------------------

    def _cursor(self, request: Request) -> tuple[Cursor, int]:
        per_page = _int_param(request, "per_page") or self.per_page
        cursor = Cursor(before=_int_param(request, "before"),
                        after=_int_param(request, "after"))
        return cursor, min(per_page, MAX_PER_PAGE)

    def _pager(self, request: Request, route: str, page: Page, *, newest_first: bool,
               **query: Any) -> Pager:
        url = self.renderer.url_builder(request)
        per_page = request.query_params.get("per_page")
        first = url(route, per_page=per_page, **query)
        at_first = not (request.query_params.get("before") or request.query_params.get("after"))
        newer = (None if page.newer is None
                 else url(route, after=page.newer, per_page=per_page, **query))
        older = (None if page.older is None
                 else url(route, before=page.older, per_page=per_page, **query))
        previous, following = (newer, older) if newest_first else (older, newer)
        return Pager(first=None if at_first else first, previous=previous, next=following)

    def guarded(self, handler: Handler) -> Handler:
        """Turn pgqrs errors raised by a page into an error page with the right status."""

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except (errors.QueueNotFoundError, errors.WorkerNotFoundError) as exc:
                return self._error(request, 404, "Not found", str(exc))
            except errors.ValidationError as exc:
                return self._error(request, 400, "Bad request", str(exc))
            except errors.DatabaseUnavailableError as exc:
                return self._error(request, 503, "Database unavailable", str(exc))
            except errors.PgqrsError as exc:
                return self._error(request, 500, "Error", str(exc))

        return page

    def _error(self, request: Request, status: int, title: str, detail: str) -> Response:
        return self.renderer.page(request, "error.html", {"title": title, "detail": detail},
                                  status=status)

    # -- pages -----------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        """All queues: depth by state, oldest pending age, throughput; workers; dead letters."""
        queues = await self.admin.list_queues()
        metrics = {m.queue_name: m for m in await self.admin.all_queues_metrics()}
        (health,) = await self.admin.worker_health_stats(self.settings.stale_threshold)
        async with self.reading() as conn:
            series = await self.repo.throughput(conn, queue_id=None, buckets=BUCKETS,
                                                bucket_seconds=BUCKET_SECONDS)
            dead = await self.repo.dead_letter_count(conn, queue_id=None, cap=COUNT_CAP + 1)
        zeros = [0] * BUCKETS
        total = [sum(s[i] for s in series.values()) for i in range(BUCKETS)]
        rows = [{"info": q, "metrics": metrics.get(q.queue_name),
                 "chart": chart(series.get(q.id, zeros), bucket_seconds=BUCKET_SECONDS,
                                width=160, height=28)}
                for q in queues]
        return self.renderer.page(request, "overview.html", {
            "rows": rows, "health": health, "dead": dead, "cap": COUNT_CAP,
            "chart": chart(total, bucket_seconds=BUCKET_SECONDS, width=480, height=64),
            "window_minutes": BUCKETS * BUCKET_SECONDS // 60,
        })

    async def queue(self, request: Request) -> Response:
        """One queue: its rules, counts, throughput and messages (paged, by state)."""
        name = request.query_params.get("name", "")
        if not name:
            raise errors.ValidationError("name is required")
        state = request.query_params.get("state") or None
        if state is not None and state not in MESSAGE_STATES:
            raise errors.ValidationError(f"state must be one of {', '.join(MESSAGE_STATES)}")
        cursor, limit = self._cursor(request)
        info = await self.admin.get_queue(name)
        metrics = await self.admin.queue_metrics(name)
        async with self.reading() as conn:
            page = await self.repo.messages_page(
                conn, queue_id=info.id, state=state, cursor=cursor, limit=limit,
                max_read_ct=self.dead_threshold(info))
            series = await self.repo.throughput(conn, queue_id=info.id, buckets=BUCKETS,
                                                bucket_seconds=BUCKET_SECONDS)
            dead = await self.repo.dead_letter_count(conn, queue_id=info.id,
                                                     cap=COUNT_CAP + 1)
            now = await self.repo.now(conn)
        return self.renderer.page(request, "queue.html", {
            "info": info, "policy": _policy(info), "metrics": metrics, "state": state,
            "states": MESSAGE_STATES, "page": page, "now": now, "dead": dead,
            "cap": COUNT_CAP,
            "pager": self._pager(request, "queue", page, newest_first=False, name=name,
                                 state=state),
            "chart": chart(series.get(info.id, [0] * BUCKETS), bucket_seconds=BUCKET_SECONDS,
                           width=480, height=64),
            "window_minutes": BUCKETS * BUCKET_SECONDS // 60,
        })

    def dead_threshold(self, info: QueueInfo) -> int:
        """Deliveries after which a message of this queue is a dead letter: its own."""
        return info.max_read_ct

    async def message(self, request: Request) -> Response:
        """One live message: where it stands, and its payload."""
        message_id = _int_param(request, "id")
        if message_id is None:
            raise errors.ValidationError("id is required")
        message = await (await self.admin.get_messages()).get(message_id)
        if message is None:
            return self._error(request, 404, "Not found",
                               f"Message #{message_id} is not in any queue any more "
                               "(processed, deleted or dead-lettered).")
        queue = await (await self.admin.get_queues()).get(message.queue_id)
        async with self.reading() as conn:
            state = await self.repo.message_state(conn, message_id=message_id,
                                                  max_read_ct=self.dead_threshold(queue))
            now = await self.repo.now(conn)
        return self.renderer.page(request, "message.html", {
            "message": message, "queue": queue, "state": state or "gone", "now": now,
            "archived": False,
        })

    async def archived(self, request: Request) -> Response:
        """One archived message (processed or dead letter) and its payload."""
        archive_id = _int_param(request, "id")
        if archive_id is None:
            raise errors.ValidationError("id is required")
        row = await (await self.admin.get_archive()).get(archive_id)
        if row is None:
            return self._error(request, 404, "Not found",
                               f"Archived message #{archive_id} does not exist "
                               "(replayed, deleted or purged).")
        queues = {q.id: q for q in await self.admin.list_queues()}
        async with self.reading() as conn:
            now = await self.repo.now(conn)
        return self.renderer.page(request, "message.html", {
            "message": row, "queue": queues.get(row.queue_id), "now": now, "archived": True,
            "state": "dead letter" if row.dead_letter else "processed",
            "section": "dead" if row.dead_letter else "queues",
        })

    async def dead_letters(self, request: Request) -> Response:
        """Dead letters, newest first, of one queue or all; replay or delete them."""
        name = request.query_params.get("queue") or None
        cursor, limit = self._cursor(request)
        queues = await self.admin.list_queues()
        queue_id = None if name is None else (await self.admin.get_queue(name)).id
        async with self.reading() as conn:
            page = await self.repo.dead_letters_page(conn, queue_id=queue_id, cursor=cursor,
                                                     limit=limit)
            count = await self.repo.dead_letter_count(conn, queue_id=queue_id,
                                                      cap=COUNT_CAP + 1)
            now = await self.repo.now(conn)
        return self.renderer.page(request, "dead_letters.html", {
            "page": page, "count": count, "now": now, "cap": COUNT_CAP, "queue": name,
            "queues": queues,
            "pager": self._pager(request, "dead_letters", page, newest_first=True, queue=name),
        })

    async def workers(self, request: Request) -> Response:
        """Workers: status, heartbeat age, messages held; suspend, resume, stop, delete."""
        status = request.query_params.get("status") or None
        if status is not None and status not in {s.value for s in WorkerStatus}:
            raise errors.ValidationError("status must be ready, suspended or stopped")
        cursor, limit = self._cursor(request)
        (health,) = await self.admin.worker_health_stats(self.settings.stale_threshold)
        async with self.reading() as conn:
            page = await self.repo.workers_page(conn, status=status, cursor=cursor,
                                                limit=limit)
        return self.renderer.page(request, "workers.html", {
            "page": page, "status": status, "statuses": [s.value for s in WorkerStatus],
            "health": health, "stale_after": self.settings.stale_threshold,
            "pager": self._pager(request, "workers", page, newest_first=False,
                                 status=status),
        })


def app(
    target: str | AsyncEngine,
    *,
    schema: str | None = None,
    actions: bool = False,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    secret: str | bytes | None = None,
    refresh: int = 5,
    per_page: int = 50,
) -> Starlette:
    """Build the dashboard as an ASGI application, to mount or to serve.

    Example:
        Mounted in a FastAPI app, on the app's own engine (never disposed by pgqrs)::

            app.mount("/pgqrs", pgqrs.dashboard.app(engine))

    Args:
        target: the application's ``AsyncEngine`` (shared, never disposed), or a PostgreSQL
            URL: the dashboard then keeps a small pool of its own, closed when the ASGI
            server shuts the app down (lifespan).
        schema: schema of the pgqrs tables (default ``public`` or ``PGQRS_SCHEMA``).
        actions: allow changes (replay, delete, suspend, ...); read-only by default.
        token: require this bearer token (header, or a sign-in form that sets a cookie).
        basic_auth: require HTTP basic auth with this ``(user, password)``.
        secret: key signing the CSRF and sign-in cookies; random per process by default
            (give one when several processes serve the same dashboard).
        refresh: seconds between automatic page refreshes in the browser (0: never).
        per_page: rows per page of a list (at most 1000).

    Returns:
        A Starlette application.

    Raises:
        ConfigurationError: a bad option, DSN, engine or schema name.
    """
    if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 0:
        raise errors.ConfigurationError("refresh must be a whole number of seconds >= 0")
    if (isinstance(per_page, bool) or not isinstance(per_page, int)
            or not 0 < per_page <= MAX_PER_PAGE):
        raise errors.ConfigurationError(f"per_page must be between 1 and {MAX_PER_PAGE}")
    if token is not None and (not isinstance(token, str) or not token):
        raise errors.ConfigurationError("token must be a non-empty string")
    if basic_auth is not None and not (
            isinstance(basic_auth, tuple) and len(basic_auth) == 2
            and all(isinstance(p, str) and p for p in basic_auth)
            and ":" not in basic_auth[0]):
        raise errors.ConfigurationError(
            "basic_auth must be a (user, password) pair of non-empty strings, "
            "the user without ':'")
    if secret is None:
        key = secrets.token_bytes(32)
    elif isinstance(secret, str | bytes) and len(secret) >= 16:
        key = secret.encode() if isinstance(secret, str) else secret
    else:
        raise errors.ConfigurationError("secret must be a string or bytes of 16+ characters")
    dashboard = Dashboard(target, schema=schema, actions=bool(actions), refresh=refresh,
                          per_page=per_page, secret=key)
    pages: dict[str, Handler] = {
        "overview": dashboard.overview, "queue": dashboard.queue,
        "message": dashboard.message, "archived": dashboard.archived,
        "dead_letters": dashboard.dead_letters, "workers": dashboard.workers,
    }
    routes = [Route(ROUTES[name], dashboard.guarded(handler), methods=["GET", "HEAD"],
                    name=name) for name, handler in pages.items()]
    routes += [Route(ROUTES[a.route], dashboard.actions.endpoint(a), methods=["POST"],
                     name=a.route) for a in _actions.ACTIONS]
    middleware = [Middleware(_security.SecurityHeaders)]
    if token is not None or basic_auth is not None:
        middleware.append(Middleware(_security.Authentication, secret=key, token=token,
                                     basic_auth=basic_auth))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dashboard.close()

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)

