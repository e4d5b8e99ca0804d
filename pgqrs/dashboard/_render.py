"""Templates, formatting filters, the throughput chart, and the page response.

Jinja2 autoescapes every ``.html`` template, so payloads, queue names and host names are
always text, never markup; nothing is marked safe anywhere in the dashboard.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from pgqrs.dashboard import _security
from pgqrs.dashboard._queries import PREVIEW_CHARS

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("pgqrs.dashboard", "templates"),
    autoescape=jinja2.select_autoescape(["html"], default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def age(seconds: float | timedelta | None) -> str:
    """A short age such as ``42s``, ``5m 03s``, ``2h 10m`` or ``3d 4h`` (``-`` if None)."""
    if seconds is None:
        return "-"
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def timestamp(value: datetime | None) -> str:
    """A database timestamp in UTC, to the second (``-`` if None)."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any) -> str:
    """JSON, indented for reading (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def preview(text: str | None) -> str:
    """The first characters of a payload's JSON, with an ellipsis if there is more."""
    if text is None:
        return ""
    return text[:PREVIEW_CHARS] + "\u2026" if len(text) > PREVIEW_CHARS else text


def number(value: int | None) -> str:
    """``12,345`` (``-`` if None)."""
    return "-" if value is None else f"{value:,}"


_env.filters.update(age=age, timestamp=timestamp, pretty=pretty, preview=preview,
                    number=number)


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of a throughput chart, in SVG user units."""

    x: float
    y: float
    width: float
    height: float
    count: int
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """A bar chart of counts per time bucket, oldest first (drawn as inline SVG)."""

    bars: list[Bar]
    width: int
    height: int
    total: int
    peak: int
    per_minute: float


def chart(counts: Sequence[int], *, bucket_seconds: int, width: int = 240,
          height: int = 36) -> Chart:
    """Lay out ``counts`` (oldest bucket first) as bars filling ``width`` x ``height``."""
    n = max(len(counts), 1)
    step = width / n
    peak = max(counts, default=0)
    bars = []
    for i, count in enumerate(counts):
        h = 0.0 if peak == 0 else max(1.0, (height - 1) * count / peak) if count else 0.0
        ago = (n - 1 - i) * bucket_seconds
        label = f"{count:,} processed, {age(ago + bucket_seconds)} to {age(ago)} ago"
        bars.append(Bar(x=round(i * step + 0.5, 2), y=round(height - h, 2),
                        width=round(max(step - 1, 0.5), 2), height=round(h, 2),
                        count=count, label=label))
    total = sum(counts)
    minutes = n * bucket_seconds / 60
    return Chart(bars, width, height, total, peak,
                 per_minute=round(total / minutes, 1) if minutes else math.nan)


@dataclass(frozen=True, slots=True)
class Site:
    """What every page needs to know about the dashboard it belongs to."""

    routes: Mapping[str, str]
    actions: bool
    refresh: int
    database: str
    policy_actions: bool
    """Pause and resume buttons (with ``actions``)."""
    purge_archive: bool = False
    """The "purge archive (retention)" button (with ``actions``)."""


_SECTIONS = {"overview.html": "queues", "queue.html": "queues", "message.html": "queues",
             "dead_letters.html": "dead", "workers.html": "workers"}


class Renderer:
    """Renders a template into a page response with its nonce, CSRF cookie and notice."""

    def __init__(self, site: Site, csrf: _security.Csrf, flash: _security.Flash) -> None:
        self._site = site
        self._csrf = csrf
        self._flash = flash

    def url_builder(self, request: Request) -> Callable[..., str]:
        """``url(route, **query)``: a path inside the dashboard, under its mount prefix."""
        base = _security.base_path(request)

        def url(route: str, /, **query: Any) -> str:
            params = {k: v for k, v in query.items() if v is not None and v != ""}
            suffix = f"?{urlencode(params)}" if params else ""
            return f"{base}{self._site.routes[route]}{suffix}"

        return url

    def page(self, request: Request, template: str, context: Mapping[str, Any], *,
             status: int = 200) -> HTMLResponse:
        """The HTML response of ``template`` rendered with ``context``."""
        nonce = secrets.token_urlsafe(16)
        token, new_cookie = self._csrf.token(request)
        notice = self._flash.read(request)
        values: dict[str, Any] = {
            "site": self._site, "url": self.url_builder(request), "nonce": nonce,
            "csrf": token, "notice": notice, "section": _SECTIONS.get(template, ""),
            "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        }
        values.update(context)
        body = _env.get_template(template).render(values)
        response = HTMLResponse(body, status_code=status)
        response.headers["Content-Security-Policy"] = _security.page_csp(nonce)
        self._flash.clear(request, response)
        if new_cookie is not None:
            self._csrf.set_cookie(request, response, new_cookie)
        return response
