"""The dashboard over HTTP (httpx's ASGI transport, no browser): pages, escaping, read-only
mode, CSRF, confirmation, authentication, configuration errors."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest

import pgqrs.dashboard
from pgqrs import Admin, ConfigurationError, WorkerStatus

from .conftest import Scenario, client_for, csrf_token, sql

PAGES = ["/", "/queue?name=emails", "/queue?name=emails&state=pending",
         "/queue?name=emails&state=leased", "/queue?name=emails&state=delayed",
         "/queue?name=reports&state=dead", "/dead-letters", "/dead-letters?queue=reports",
         "/workers", "/workers?status=suspended"]


async def test_every_page_renders_read_only(scenario: Scenario) -> None:
    app = pgqrs.dashboard.app(scenario.dsn)
    async with client_for(app) as client:
        for path in PAGES:
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert "read-only" in response.text
            assert 'method="post"' not in response.text, path  # no action buttons
        overview = (await client.get("/")).text
        for name in ("emails", "reports", "billing"):
            assert f'href="/queue?name={name}"' in overview
        emails = (await client.get("/queue?name=emails")).text
        assert "pending (18)" in emails and "leased (3)" in emails and "delayed (5)" in emails
        dead = (await client.get("/dead-letters")).text
        assert "12 dead letters" in dead
        assert all(f'id="dead-{i}"' in dead for i in scenario.dead_ids)
        workers = (await client.get("/workers")).text
        assert "mailer-1.example.internal" in workers and ">suspended<" in workers
        detail = await client.get(f"/archived?id={scenario.dead_ids[0]}")
        assert detail.status_code == 200 and "dead letter" in detail.text
        message = await client.get(f"/message?id={scenario.hostile_id}")
        assert message.status_code == 200 and "pending" in message.text


async def test_read_only_refuses_every_action(scenario: Scenario) -> None:
    app = pgqrs.dashboard.app(scenario.dsn)
    async with client_for(app) as client:
        token = "anything"  # refused before the token is even looked at
        for path, form in [("/dead-letters/replay", {"id": scenario.dead_ids[0]}),
                           ("/dead-letters/replay-all", {}),
                           ("/dead-letters/delete", {"id": scenario.dead_ids[0]}),
                           ("/workers/status", {"id": scenario.ready_worker,
                                                "status": "suspended"}),
                           ("/queue/pause", {"name": "emails"})]:
            response = await client.post(path, data={**form, "csrf": token, "confirm": "yes"})
            assert response.status_code == 403, path
            assert "--allow-actions" in response.text
    async with Admin(scenario.dsn) as admin:
        assert await (await admin.get_archive()).dlq_count() == 12
        assert (await admin.get_worker(scenario.ready_worker)).status is WorkerStatus.READY


async def test_hostile_payload_is_text(scenario: Scenario) -> None:
    app = pgqrs.dashboard.app(scenario.dsn, actions=True)
    async with client_for(app) as client:
        for path in (f"/message?id={scenario.hostile_id}", "/queue?name=emails&state=pending"):
            response = await client.get(path)
            page = response.text
            assert "<script>window.__pwned" not in page
            assert "&lt;script&gt;window.__pwned" in page
            assert "<img src=x" not in page and "&lt;img src=x" in page
            # The only script is the dashboard's own, allowed by this response's nonce.
            nonces = re.findall(r"<script nonce=\"([^\"]+)\">", page)
            assert len(nonces) == 1 and page.count("<script") == 1
            csp = response.headers["content-security-policy"]
            assert f"script-src 'nonce-{nonces[0]}'" in csp and "unsafe-inline" not in csp
            assert response.headers["x-frame-options"] == "DENY"


async def test_actions_need_csrf_token_and_same_origin(scenario: Scenario) -> None:
    dead = scenario.dead_ids[0]
    app = pgqrs.dashboard.app(scenario.dsn, actions=True)
    async with client_for(app) as client:
        token = csrf_token((await client.get("/dead-letters")).text)
        form = {"id": str(dead), "confirm": "yes"}
        refused = [
            await client.post("/dead-letters/replay", data=form),
            await client.post("/dead-letters/replay", data={**form, "csrf": "0" * 64}),
            await client.post("/dead-letters/replay", data={**form, "csrf": token},
                              headers={"Origin": "https://evil.example"}),
            await client.post("/dead-letters/replay", data={**form, "csrf": token},
                              headers={"Sec-Fetch-Site": "cross-site"}),
            await client.post("/dead-letters/replay", json={**form, "csrf": token}),
        ]
        assert [r.status_code for r in refused] == [403, 403, 403, 403, 400]
        # Another browser (no cookie) cannot reuse this browser's token either.
        async with client_for(app) as other:
            stolen = await other.post("/dead-letters/replay", data={**form, "csrf": token})
            assert stolen.status_code == 403
        # Same host, https in the browser but http behind a TLS-terminating proxy: allowed.
        proxied = await client.post("/workers/status", headers={"Origin": "https://testserver"},
                                    data={"id": str(scenario.ready_worker), "csrf": token,
                                          "status": "suspended", "confirm": "yes"})
        assert proxied.status_code == 303
    async with Admin(scenario.dsn) as admin:
        assert (await (await admin.get_archive()).get(dead)) is not None
        assert (await admin.get_worker(scenario.ready_worker)).status is WorkerStatus.SUSPENDED


async def test_confirmation_then_replay(scenario: Scenario) -> None:
    dead = scenario.dead_ids[0]
    app = pgqrs.dashboard.app(scenario.dsn, actions=True)
    async with Admin(scenario.dsn) as admin:
        before = await (await admin.get_messages()).count("reports")
        async with client_for(app) as client:
            token = csrf_token((await client.get("/dead-letters")).text)
            ask = await client.post("/dead-letters/replay",
                                    data={"id": str(dead), "csrf": token,
                                          "next": "/dead-letters?queue=reports"})
            assert ask.status_code == 200 and "Please confirm" in ask.text
            assert f"Replay dead letter #{dead} onto its queue?" in ask.text
            assert await (await admin.get_archive()).get(dead) is not None  # not yet
            confirm = csrf_token(ask.text)
            done = await client.post("/dead-letters/replay",
                                     data={"id": str(dead), "csrf": confirm, "confirm": "yes",
                                           "next": "/dead-letters?queue=reports"})
            assert done.status_code == 303
            assert done.headers["location"] == "/dead-letters?queue=reports"
            after = await client.get(done.headers["location"])
            assert f"Dead letter #{dead} replayed as message #" in after.text
            assert f'id="dead-{dead}"' not in after.text
            # The notice is shown once.
            assert "replayed as message" not in (await client.get("/dead-letters")).text
            # An open redirect is not possible through next=.
            token = csrf_token(after.text)
            away = await client.post("/dead-letters/replay",
                                     data={"id": str(scenario.dead_ids[1]), "csrf": token,
                                           "confirm": "yes", "next": "https://evil.example/"})
            assert away.headers["location"] == "/dead-letters"
        assert await (await admin.get_archive()).get(dead) is None
        assert await (await admin.get_messages()).count("reports") == before + 2


async def test_worker_actions_and_refused_transition(scenario: Scenario) -> None:
    worker = scenario.ready_worker
    app = pgqrs.dashboard.app(scenario.dsn, actions=True)
    async with Admin(scenario.dsn) as admin, client_for(app) as client:

        async def post(path: str, **fields: str | int) -> str:
            token = csrf_token((await client.get("/workers")).text)
            data = {k: str(v) for k, v in fields.items()}
            response = await client.post(path, data={**data, "csrf": token, "confirm": "yes"})
            assert response.status_code == 303, response.text
            return (await client.get(response.headers["location"])).text

        assert f"Worker #{worker} suspended" in await post("/workers/status", id=worker,
                                                           status="suspended")
        assert (await admin.get_worker(worker)).status is WorkerStatus.SUSPENDED
        page = await post("/workers/status", id=worker, status="suspended")
        assert 'class="notice error"' in page and "suspended" in page
        await post("/workers/status", id=worker, status="ready")
        assert (await admin.get_worker(worker)).status is WorkerStatus.READY
        held = await admin.get_worker_messages(worker)
        assert len(held) == 3
        await post("/workers/status", id=worker, status="stopped")
        assert (await admin.get_worker(worker)).status is WorkerStatus.STOPPED
        assert await admin.get_worker_messages(worker) == []  # released on stop
        assert f"Worker #{worker} deleted" in await post("/workers/delete", id=worker)
        bad = await client.post("/workers/status", data={
            "id": "x", "status": "ready", "confirm": "yes",
            "csrf": csrf_token((await client.get("/workers")).text)})
        assert bad.status_code == 400 and "whole number" in bad.text


async def test_delete_and_replay_all_dead_letters(scenario: Scenario) -> None:
    app = pgqrs.dashboard.app(scenario.dsn, actions=True)
    async with Admin(scenario.dsn) as admin, client_for(app) as client:
        token = csrf_token((await client.get("/dead-letters")).text)
        gone = await client.post("/dead-letters/delete", data={
            "id": str(scenario.dead_ids[0]), "csrf": token, "confirm": "yes"})
        assert gone.status_code == 303
        archive = await admin.get_archive()
        assert await archive.get(scenario.dead_ids[0]) is None
        live_before = await (await admin.get_messages()).count("reports")
        replay_all = await client.post("/dead-letters/replay-all", data={
            "queue": "reports", "csrf": token, "confirm": "yes"})
        assert replay_all.status_code == 303
        page = await client.get(replay_all.headers["location"])
        assert "11 dead letters replayed" in page.text
        assert await archive.dlq_count() == 0
        assert await (await admin.get_messages()).count("reports") == live_before + 11


async def test_bulk_replay_makes_the_same_message_as_replay_dlq(scenario: Scenario) -> None:
    """The dashboard's "replay all" statement and Admin.replay_dlq must agree, column for
    column (both copy what a fresh message inherits from its dead letter)."""
    one, other = scenario.dead_ids[0], scenario.dead_ids[1]
    await sql(scenario.dsn, "UPDATE pgqrs_archive SET payload = '{\"same\": true}', "
                            "producer_worker_id = 1 WHERE id = ANY($1)", [one, other])
    await sql(scenario.dsn, "DELETE FROM pgqrs_archive WHERE dead_letter AND id <> ALL($1)",
              [one, other])
    async with Admin(scenario.dsn) as admin:
        first = await admin.replay_dlq(one)
        app = pgqrs.dashboard.app(scenario.dsn, actions=True)
        async with client_for(app) as client:
            token = csrf_token((await client.get("/dead-letters")).text)
            await client.post("/dead-letters/replay-all", data={"csrf": token,
                                                                "confirm": "yes"})
    rows = await sql(scenario.dsn, "SELECT * FROM pgqrs_messages WHERE payload = "
                                   "'{\"same\": true}' ORDER BY id")
    assert len(rows) == 2 and rows[0]["id"] == first
    differ = {"id", "enqueued_at", "vt"}
    assert {k: v for k, v in rows[0].items() if k not in differ} == \
           {k: v for k, v in rows[1].items() if k not in differ}


async def test_paging_dead_letters_and_messages(scenario: Scenario) -> None:
    app = pgqrs.dashboard.app(scenario.dsn, per_page=5)
    async with client_for(app) as client:
        seen: list[int] = []
        url = "/dead-letters"
        while url:
            page = (await client.get(url)).text
            seen += [int(i) for i in re.findall(r'id="dead-(\d+)"', page)]
            found = re.search(r'href="([^"]+)" rel="next"', page)
            url = found.group(1).replace("&amp;", "&") if found else ""
        assert seen == sorted(scenario.dead_ids, reverse=True)  # newest first, each once
        back = re.search(r'href="([^"]+)" rel="prev"', page)
        assert back is not None
        previous = (await client.get(back.group(1).replace("&amp;", "&"))).text
        assert [int(i) for i in re.findall(r'id="dead-(\d+)"', previous)] == seen[-7:-2]

        pending = (await client.get("/queue?name=emails&state=pending&per_page=50")).text
        ids = [int(i) for i in re.findall(r'href="/message\?id=(\d+)"', pending)]
        assert len(ids) == 18 and ids == sorted(ids) and scenario.hostile_id in ids
        leased = (await client.get("/queue?name=emails&state=leased")).text
        assert leased.count('class="badge s-leased"') == 3


@pytest.mark.parametrize(("path", "status"), [
    ("/queue?name=nope", 404), ("/queue?name=tasks&state=bogus", 400), ("/queue", 400),
    ("/message?id=abc", 400), ("/message?id=999999", 404), ("/archived?id=-3", 400),
    ("/workers?status=zombie", 400), ("/dead-letters?queue=nope", 404),
    ("/dead-letters?before=1e9", 400), ("/no-such-page", 404),
])
async def test_bad_requests_get_clear_pages(dsn: str, queue: str, path: str,
                                            status: int) -> None:
    async with client_for(pgqrs.dashboard.app(dsn)) as client:
        response = await client.get(path)
        assert response.status_code == status, response.text


async def test_token_and_basic_auth(dsn: str) -> None:
    app = pgqrs.dashboard.app(dsn, token="t0ken-s3cret", basic_auth=("ops", "pa55:word"))
    async with client_for(app) as client:
        denied = await client.get("/")
        assert denied.status_code == 401 and "Basic realm" in denied.headers["www-authenticate"]
        assert "t0ken-s3cret" not in denied.text
        assert (await client.get("/", headers={"Authorization": "Bearer t0ken-s3cret"})
                ).status_code == 200
        assert (await client.get("/", headers={"Authorization": "Bearer wrong"})
                ).status_code == 401
        good = base64.b64encode(b"ops:pa55:word").decode()
        bad = base64.b64encode(b"ops:nope").decode()
        assert (await client.get("/", headers={"Authorization": f"Basic {good}"})
                ).status_code == 200
        assert (await client.get("/", headers={"Authorization": f"Basic {bad}"})
                ).status_code == 401
        wrong = await client.post("/login", data={"token": "nope"})
        assert wrong.status_code == 401
        login = await client.post("/login", data={"token": "t0ken-s3cret"})
        assert login.status_code == 303 and "t0ken-s3cret" not in login.headers["set-cookie"]
        assert (await client.get("/workers")).status_code == 200  # the cookie signs in


async def test_no_password_in_any_page(scenario: Scenario) -> None:
    with_password = scenario.dsn.replace("://postgres@", "://postgres:Sup3r-S3cret@", 1)
    assert "Sup3r-S3cret" in with_password
    app = pgqrs.dashboard.app(with_password, actions=True)
    async with client_for(app) as client:
        for path in PAGES:
            page = (await client.get(path)).text
            assert "Sup3r-S3cret" not in page
        assert "postgres:***@127.0.0.1" in page  # the database is named, not its password


async def test_mounted_under_a_prefix_on_the_host_engine(scenario: Scenario) -> None:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(scenario.dsn.replace("postgresql://",
                                                      "postgresql+asyncpg://", 1))
    host = FastAPI()
    host.mount("/ops/pgqrs", pgqrs.dashboard.app(engine, actions=True))
    try:
        async with client_for(host) as client:
            page = await client.get("/ops/pgqrs/")
            assert page.status_code == 200 and "emails" in page.text
            links = re.findall(r'(?:href|action)="([^"]+)"', page.text)
            assert links and all(link.startswith("/ops/pgqrs/") for link in links), links
            assert "path=/ops/pgqrs/;" in page.headers["set-cookie"].lower()
            for link in set(links):
                if "/queue" in link or "/workers" in link or "/dead-letters" in link:
                    assert (await client.get(link.replace("&amp;", "&"))).status_code == 200
            token = csrf_token((await client.get("/ops/pgqrs/workers")).text)
            done = await client.post("/ops/pgqrs/workers/status", data={
                "id": str(scenario.ready_worker), "status": "suspended", "csrf": token,
                "confirm": "yes", "next": "/ops/pgqrs/workers"})
            assert done.headers["location"] == "/ops/pgqrs/workers"
            outside = await client.post("/ops/pgqrs/workers/status", data={
                "id": str(scenario.ready_worker), "status": "ready", "csrf": token,
                "confirm": "yes", "next": "/elsewhere"})
            assert outside.headers["location"] == "/ops/pgqrs/workers"
        # The host's engine was lent, never disposed: it still works.
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    finally:
        await engine.dispose()


def test_bad_configuration_is_refused() -> None:
    dsn = "postgresql://localhost/db"
    for kwargs in ({"refresh": -1}, {"per_page": 0}, {"per_page": 5000}, {"token": ""},
                   {"basic_auth": ("user", "")}, {"basic_auth": ("a:b", "c")},
                   {"secret": "short"}, {"schema": "bad-name"}):
        with pytest.raises(ConfigurationError):
            pgqrs.dashboard.app(dsn, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        pgqrs.dashboard.app("mysql://localhost/db")
    with pytest.raises(ConfigurationError):
        pgqrs.dashboard.app(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        pgqrs.dashboard.serve(dsn, port=70000)


def test_import_pgqrs_does_not_import_the_dashboard() -> None:
    code = ("import sys, pgqrs; bad = [m for m in sys.modules if m.startswith("
            "('pgqrs.dashboard', 'starlette', 'jinja2', 'uvicorn'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_refresh_is_progressive_enhancement(dsn: str) -> None:
    async with client_for(pgqrs.dashboard.app(dsn, refresh=7)) as client:
        assert 'data-refresh="7"' in (await client.get("/")).text
    async with client_for(pgqrs.dashboard.app(dsn, refresh=0)) as client:
        assert 'data-refresh="0"' in (await client.get("/")).text


async def test_schema_errors_show_the_fix(empty_dsn: str) -> None:
    async with client_for(pgqrs.dashboard.app(empty_dsn)) as client:
        response = await client.get("/")
        assert response.status_code == 500 and "pgqrs install" in response.text
