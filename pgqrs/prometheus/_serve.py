"""Ways to expose the metrics: an ASGI app to mount, and a standalone exporter."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, start_http_server
from sqlalchemy.ext.asyncio import AsyncEngine

from pgqrs import errors
from pgqrs.prometheus._collector import QueueCollector

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def asgi_app(dsn: str | AsyncEngine, *, registry: CollectorRegistry | None = REGISTRY,
             schema: str | None = None, **options: Any) -> ASGIApp:
    """An ASGI app serving the queue state and everything else in ``registry``.

    Each request reads the queue state on the app's own event loop (with the application's
    engine, if given one), then renders ``registry`` with prometheus_client's ASGI app:
    content negotiation, gzip and ``?name[]=`` filters included.

    Example:
        app.mount("/metrics", pgqrs.prometheus.asgi_app(engine))

    Args:
        dsn: a PostgreSQL URL, or the application's ``AsyncEngine`` (shared, never
            disposed).
        registry: where the queue-state collector is registered, and what is served
            (default: prometheus_client's global ``REGISTRY``, so the process's and the
            consume loop's metrics come along). ``None``: a registry of its own, holding
            the queue state alone. Call ``asgi_app`` once per registry.
        schema: schema of the pgqrs tables.
        **options: ``QueueCollector`` options (``archive_exact_limit``, ``Settings``
            options).

    Raises:
        ConfigurationError: a bad option, DSN or schema name.
        ValueError: ``registry`` already holds a pgqrs queue-state collector.
    """
    collector = QueueCollector(dsn, schema=schema, **options)
    if registry is None:
        registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    render = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own (uvicorn module:app)
            await _lifespan(receive, send, collector)
            return
        if scope["type"] != "http":
            raise errors.ConfigurationError(
                f"pgqrs metrics serve HTTP only, not {scope['type']!r}")
        scrape = await collector.scrape()
        with collector.serving(scrape):
            await render(scope, receive, send)

    return app


async def _lifespan(receive: Receive, send: Send, collector: QueueCollector) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await collector.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


class Exporter:
    """A running ``serve()`` exporter: its address, and how to stop it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread,
                 collector: QueueCollector) -> None:
        self._server = server
        self._thread = thread
        self.collector = collector

    @property
    def host(self) -> str:
        """The address the exporter listens on."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port the exporter listens on (the one the OS chose, for port 0)."""
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """The exporter's metrics URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(dsn: str, *, port: int = 9464, host: str = "127.0.0.1",
          schema: str | None = None, **options: Any) -> Exporter:
    """Start an exporter of the queue state in a background thread (``pgqrs metrics serve``).

    Each scrape opens one connection, runs one statement and closes the connection; nothing
    is held between scrapes. The exporter serves its own registry (the queue state alone):
    consume-loop metrics live in the consumers' processes.

    Args:
        dsn: a PostgreSQL URL.
        port: TCP port (0: any free port, see ``Exporter.port``).
        host: address to listen on; the default keeps the exporter local, use ``0.0.0.0``
            (or the host's address) for a Prometheus on another machine.
        schema: schema of the pgqrs tables.
        **options: ``QueueCollector`` options.

    Returns:
        The running exporter; ``stop()`` ends it.

    Raises:
        ConfigurationError: a bad option, DSN, port or schema name, or the address cannot
            be listened on (port in use, unknown host).
    """
    if not isinstance(dsn, str):
        raise errors.ConfigurationError(
            "serve() needs a DSN: it reads the database from its own threads")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise errors.ConfigurationError(f"port must be an integer 0-65535, got {port!r}")
    if not isinstance(host, str) or not host:
        raise errors.ConfigurationError(f"host must be a non-empty string, got {host!r}")
    collector = QueueCollector(dsn, schema=schema, **options)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise errors.ConfigurationError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return Exporter(server, thread, collector)
