"""The pgqrs web dashboard: queues, dead letters and workers at a glance.

Install it with ``pip install 'pgqrs[dashboard]'``. Run it on its own with
``pgqrs dashboard`` (or :func:`serve`), or mount :func:`app` in an ASGI application::

    from fastapi import FastAPI
    import pgqrs.dashboard

    api = FastAPI()
    api.mount("/pgqrs", pgqrs.dashboard.app(engine))  # read-only unless actions=True

``import pgqrs`` never imports this package.
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installation
    raise ModuleNotFoundError(
        f"pgqrs.dashboard needs the 'dashboard' extra ({exc.name} is missing): "
        "pip install 'pgqrs[dashboard]'", name=exc.name,
    ) from exc

from pgqrs.dashboard._app import app
from pgqrs.dashboard._server import build_parser, main, run, serve

__all__ = ["app", "build_parser", "main", "run", "serve"]
