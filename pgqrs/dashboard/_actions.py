"""The dashboard's writes: thin adapters over ``Admin``, and the POST handler they share.

Every action is a POST carrying the CSRF token, and runs only when the dashboard was
built with ``actions=True`` and the request says ``confirm=yes``: a form submitted
without it (no JavaScript, or a crafted request) gets a confirmation page instead, and
with JavaScript the browser's ``confirm()`` dialog sets it.

``pause_queue`` and ``resume_queue`` call the queue-policy methods of ``Admin`` (SPEC §12),
shown and routed while ``POLICY_ACTIONS`` is True. ``purge_archive`` calls
``Admin.purge_archive`` (SPEC §14, retention), which arrives with the maintenance work: it
is shown and routed only once ``Admin`` has that method (``PURGE_ARCHIVE``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, cast

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pgqrs import errors
from pgqrs._db import Database
from pgqrs.admin import Admin
from pgqrs.dashboard import _security
from pgqrs.dashboard._queries import DashboardRepository
from pgqrs.dashboard._render import Renderer
from pgqrs.types import WorkerStatus

POLICY_ACTIONS = True
"""Whether the queue-policy actions (pause and resume a queue) are offered."""
PURGE_ARCHIVE = hasattr(Admin, "purge_archive")
"""Whether "purge archive (retention)" is offered: once ``Admin.purge_archive`` exists."""

REPLAY_BATCH = 1000
"""Dead letters replayed per transaction by "replay all"."""
REPLAY_SECONDS = 10.0
""""Replay all" stops starting new batches after this long, so a request stays short."""


class _PurgeAdmin(Protocol):
    """``Admin.purge_archive`` (SPEC §14), called only where ``PURGE_ARCHIVE`` is True."""

    async def purge_archive(self, queue: str | None = None,
                            older_than: float | None = None) -> int: ...


class Operations:
    """What the dashboard can change, each returning the notice to show afterwards."""

    def __init__(self, admin: Admin, db: Database, repo: DashboardRepository) -> None:
        self._admin = admin
        self._db = db
        self._repo = repo

    async def replay(self, archive_id: int) -> str:
        """Put one dead letter back on its queue."""
        new_id = await self._admin.replay_dlq(archive_id)
        if new_id is None:
            return f"Dead letter #{archive_id} was not found (already replayed or deleted?)"
        return f"Dead letter #{archive_id} replayed as message #{new_id}"

    async def delete_dead_letter(self, archive_id: int) -> str:
        """Delete one dead letter for good."""
        archive = await self._admin.get_archive()
        row = await archive.get(archive_id)
        if row is None or not row.dead_letter:
            return f"Dead letter #{archive_id} was not found (already replayed or deleted?)"
        if not await archive.delete(archive_id):
            return f"Dead letter #{archive_id} was already gone"
        return f"Dead letter #{archive_id} deleted"

    async def replay_all(self, queue: str | None) -> str:
        """Replay every dead letter (of one queue, or all), in batches."""
        queue_id = None if queue is None else (await self._admin.get_queue(queue)).id
        replayed = 0
        deadline = time.monotonic() + REPLAY_SECONDS
        while True:
            async with self._db.transaction() as conn:
                assert isinstance(conn, AsyncConnection)
                done = await self._repo.replay_dead_letters(conn, queue_id=queue_id,
                                                            batch=REPLAY_BATCH)
            replayed += done
            if done < REPLAY_BATCH:
                return f"{replayed:,} dead letters replayed"
            if time.monotonic() > deadline:
                return (f"{replayed:,} dead letters replayed; more remain, "
                        "replay all again to continue")

    async def set_worker_status(self, worker_id: int, status: WorkerStatus) -> str:
        """Suspend, resume or stop a worker."""
        await self._admin.set_worker_status(worker_id, status)
        verb = {WorkerStatus.SUSPENDED: "suspended", WorkerStatus.READY: "resumed",
                WorkerStatus.STOPPED: "stopped"}[status]
        return f"Worker #{worker_id} {verb}"

    async def delete_worker(self, worker_id: int) -> str:
        """Delete a stopped worker's row."""
        await self._admin.delete_worker(worker_id)
        return f"Worker #{worker_id} deleted"

    async def pause_queue(self, name: str) -> str:
        """Stop consumers claiming from a queue (enqueues still accepted)."""
        await self._admin.pause_queue(name)
        return f"Queue {name!r} paused"

    async def resume_queue(self, name: str) -> str:
        """Let consumers claim from a paused queue again."""
        await self._admin.resume_queue(name)
        return f"Queue {name!r} resumed"

    async def purge_archive(self, name: str) -> str:
        """Delete a queue's archive rows older than its retention."""
        purged = await cast(_PurgeAdmin, self._admin).purge_archive(queue=name)
        return f"{purged:,} archived messages of {name!r} purged (per its retention)"


Form = Mapping[str, str]


def _int(form: Form, name: str) -> int:
    try:
        value = int(form.get(name, ""))
    except ValueError:
        raise errors.ValidationError(f"{name} must be a whole number") from None
    if not 0 < value < 2**63:
        raise errors.ValidationError(f"{name} is out of range")
    return value


def _name(form: Form, name: str = "name") -> str:
    value = form.get(name, "")
    if not value:
        raise errors.ValidationError(f"{name} is required")
    return value


_STATUS = {"suspended": WorkerStatus.SUSPENDED, "ready": WorkerStatus.READY,
           "stopped": WorkerStatus.STOPPED}
_STATUS_VERB = {"suspended": "Suspend", "ready": "Resume", "stopped": "Stop"}


def _status(form: Form) -> WorkerStatus:
    try:
        return _STATUS[form.get("status", "")]
    except KeyError:
        raise errors.ValidationError("status must be suspended, ready or stopped") from None


@dataclass(frozen=True, slots=True)
class Action:
    """One POST endpoint: what it asks to confirm, what it does, where it returns."""

    route: str
    describe: Callable[[Form], str]
    run: Callable[[Operations, Form], Awaitable[str]]
    back: str
    requires: Literal["policy", "purge"] | None = None
    """Offered only while ``POLICY_ACTIONS`` (policy) or ``PURGE_ARCHIVE`` (purge) holds."""

    @property
    def available(self) -> bool:
        """Whether this version of pgqrs offers the action."""
        return {None: True, "policy": POLICY_ACTIONS, "purge": PURGE_ARCHIVE}[self.requires]


ACTIONS: tuple[Action, ...] = (
    Action("replay", lambda f: f"Replay dead letter #{_int(f, 'id')} onto its queue?",
           lambda ops, f: ops.replay(_int(f, "id")), "dead_letters"),
    Action("delete_dead_letter",
           lambda f: f"Delete dead letter #{_int(f, 'id')} for good?",
           lambda ops, f: ops.delete_dead_letter(_int(f, "id")), "dead_letters"),
    Action("replay_all",
           lambda f: ("Replay every dead letter of queue "
                      f"{f['queue']!r}?" if f.get("queue") else
                      "Replay every dead letter of every queue?"),
           lambda ops, f: ops.replay_all(f.get("queue") or None), "dead_letters"),
    Action("worker_status",
           lambda f: f"{_STATUS_VERB[_status(f).value]} worker #{_int(f, 'id')}?",
           lambda ops, f: ops.set_worker_status(_int(f, "id"), _status(f)), "workers"),
    Action("delete_worker", lambda f: f"Delete stopped worker #{_int(f, 'id')}?",
           lambda ops, f: ops.delete_worker(_int(f, "id")), "workers"),
    Action("pause_queue", lambda f: f"Pause queue {_name(f)!r}? Consumers stop claiming.",
           lambda ops, f: ops.pause_queue(_name(f)), "overview", requires="policy"),
    Action("resume_queue", lambda f: f"Resume queue {_name(f)!r}?",
           lambda ops, f: ops.resume_queue(_name(f)), "overview", requires="policy"),
    Action("purge_archive",
           lambda f: f"Purge the archive of queue {_name(f)!r} per its retention?",
           lambda ops, f: ops.purge_archive(_name(f)), "overview", requires="purge"),
)


class ActionHandler:
    """Serves every action's POST: permission, CSRF, validation, confirmation, run."""

    def __init__(self, ops: Operations, renderer: Renderer, csrf: _security.Csrf,
                 flash: _security.Flash, *, enabled: bool) -> None:
        self._ops = ops
        self._renderer = renderer
        self._csrf = csrf
        self._flash = flash
        self._enabled = enabled

    def endpoint(self, action: Action) -> Callable[[Request], Awaitable[Response]]:
        """The Starlette endpoint of ``action``."""

        async def handle(request: Request) -> Response:
            return await self._handle(action, request)

        return handle

    def _refuse(self, request: Request, status: int, title: str, detail: str) -> Response:
        return self._renderer.page(request, "error.html", {"title": title, "detail": detail},
                                   status=status)

    async def _handle(self, action: Action, request: Request) -> Response:
        if not self._enabled:
            return self._refuse(request, 403, "Read-only dashboard",
                                "This dashboard was started read-only; start it with "
                                "--allow-actions (or app(..., actions=True)) to change things.")
        if not action.available:
            return self._refuse(request, 404, "Not available",
                                "This version of pgqrs does not offer this action.")
        form = await _security.read_form(request)
        if form is None:
            return self._refuse(request, 400, "Bad request",
                                "Expected a small URL-encoded form.")
        problem = self._csrf.check(request, form)
        if problem is not None:
            return self._refuse(request, 403, "Request refused", f"Refused: {problem}.")
        url = self._renderer.url_builder(request)
        back = _security.safe_next(request, form.get("next"), url(action.back))
        try:
            question = action.describe(form)
        except errors.ValidationError as exc:
            return self._refuse(request, 400, "Bad request", str(exc))
        if form.get("confirm") != "yes":
            fields = {k: v for k, v in form.items() if k not in ("csrf", "confirm", "next")}
            return self._renderer.page(request, "confirm.html", {
                "question": question, "action": action.route, "fields": fields,
                "back": back,
            })
        try:
            kind, text = "ok", await action.run(self._ops, form)
        except errors.PgqrsError as exc:
            kind, text = "error", str(exc)
        response = RedirectResponse(back, status_code=303)
        self._flash.set(request, response, kind, text)
        return response
