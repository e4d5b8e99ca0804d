"""Fixtures of the dashboard tests: a scenario with every kind of row, the dashboard served
by uvicorn on a free port, and headless Chromium (Debian's, driven through its
chromedriver; nothing is ever downloaded).

Without Chromium the browser tests skip, naming the install command; with ``CI`` set
they fail instead, since ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from _programs import require_program

from pgqrs import Admin, Consumer, Producer

CHROMIUM_APT = "apt-get update && apt-get install -y chromium chromium-driver"
HOSTILE = "<script>window.__pwned = 1; alert('pwned')</script>"
HOSTILE_IMG = "</pre><img src=x id=pwned-img onerror=\"window.__pwned = 2\">"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def sql(dsn: str, statement: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


@dataclass
class Scenario:
    """Queues with messages in every state, dead letters, and workers in every status."""

    dsn: str
    hostile_id: int = 0
    dead_ids: list[int] = field(default_factory=list)
    ready_worker: int = 0
    suspended_worker: int = 0
    clients: list[Producer | Consumer] = field(default_factory=list)


async def build_scenario(dsn: str) -> Scenario:
    scenario = Scenario(dsn)
    async with Admin(dsn) as admin:
        for name in ("emails", "reports", "billing"):
            await admin.create_queue(name)
    emails = Producer(dsn, "emails", "web-1.example.internal", 8001)
    reports = Producer(dsn, "reports", "web-2.example.internal", 8002)
    mailer = Consumer(dsn, "emails", "mailer-1.example.internal", 9001)
    reporter = Consumer(dsn, "reports", "reporter-1.example.internal", 9002)
    biller = Consumer(dsn, "billing", "billing-1.example.internal", 9003)
    scenario.clients = [emails, reports, mailer, reporter, biller]

    # History first: processed work, for the throughput chart.
    digests = await emails.enqueue_batch([{"digest": i} for i in range(150)])
    claimed = await mailer.dequeue(len(digests))
    await mailer.archive_batch([m.id for m in claimed])
    # Live messages in every state.
    await emails.enqueue_batch([{"to": f"user{i}@example.com", "template": "welcome",
                                 "locale": "en"} for i in range(40)])
    scenario.hostile_id = await emails.enqueue({"subject": HOSTILE, "body": HOSTILE_IMG})
    await emails.enqueue_batch([{"to": f"later{i}@example.com", "template": "reminder"}
                                for i in range(5)], delay=3600)
    done = await mailer.dequeue(20)
    await mailer.archive_batch([m.id for m in done])
    await mailer.dequeue(3)  # held: leased

    # Dead letters the way they happen: every allowed delivery's lease runs out.
    # (A message whose lease ran out goes behind the ones visible before it, so the 12
    # that die are alone in the queue while they do.)
    await reports.enqueue_batch([{"report": "monthly", "account": i} for i in range(12)])
    for _ in range(5):
        assert len(await reporter.dequeue(12, visibility_timeout=0.05)) == 12
        await asyncio.sleep(0.08)
    async with Admin(dsn) as admin:
        assert len(await admin.dlq("reports")) == 12
    await reports.enqueue_batch([{"report": "monthly", "account": i} for i in range(12, 30)])
    ok = await reporter.dequeue(10)
    await reporter.archive_batch([m.id for m in ok])

    await biller.dequeue(1)  # registers the worker (nothing to claim)
    await biller.suspend()
    # Spread the processed messages over the last minutes, as a steady flow of work would
    # have left them (the archive's clock is the database's, so only SQL can do this).
    await sql(dsn, "UPDATE pgqrs_archive SET archived_at = now() - "
                   "((id * 337) % 880 + 3) * interval '1 s' WHERE NOT dead_letter")
    rows = await sql(dsn, "SELECT id FROM pgqrs_archive WHERE dead_letter ORDER BY id")
    scenario.dead_ids = [r["id"] for r in rows]
    assert mailer.worker_id is not None and biller.worker_id is not None
    scenario.ready_worker = mailer.worker_id
    scenario.suspended_worker = biller.worker_id
    return scenario


@pytest.fixture
async def scenario(dsn: str) -> AsyncIterator[Scenario]:
    built = await build_scenario(dsn)
    try:
        yield built
    finally:
        for client in built.clients:
            with contextlib.suppress(Exception):
                await client.close()


@contextlib.asynccontextmanager
async def client_for(application: Any, base_url: str = "http://testserver"
                     ) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on ``application``, inside its lifespan (which closes its pool)."""
    transport = httpx.ASGITransport(app=application)
    async with application.router.lifespan_context(application), \
            httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        yield client


class Served:
    """The dashboard served by uvicorn in a thread, on a free 127.0.0.1 port."""

    def __init__(self, application: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(application, host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def find_chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver, or skip (locally) / fail (CI) with the fix."""
    return (require_program("chromium", install=CHROMIUM_APT),
            require_program("chromedriver", install=CHROMIUM_APT))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, chromedriver = find_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    # Both paths given: Selenium Manager (which would try to download) is never run.
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,860", "--hide-scrollbars",
                     "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()

