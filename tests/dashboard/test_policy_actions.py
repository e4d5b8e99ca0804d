"""The queue's rules in the dashboard (SPEC §12, §14): pause / resume a queue, purge its
archive per its retention, and "dead" judged by each queue's own threshold.

Purging the archive calls ``Admin.purge_archive``, which arrives with the maintenance work
(issue 15): until ``Admin`` has it, the action is neither shown nor routed.
"""

from __future__ import annotations

import html
import re

import pgqrs.dashboard
from pgqrs import Admin, Consumer, Producer
from pgqrs.dashboard import _actions

from .conftest import Scenario, client_for, csrf_token


async def test_pause_and_resume_a_queue(scenario: Scenario) -> None:
    app = pgqrs.dashboard.app(scenario.dsn, actions=True)
    async with Admin(scenario.dsn) as admin, client_for(app) as client:
        page = (await client.get("/queue?name=emails")).text
        assert "Pause queue" in page
        done = await client.post("/queue/pause", data={
            "name": "emails", "csrf": csrf_token(page), "confirm": "yes"})
        assert done.status_code == 303
        page = html.unescape((await client.get(done.headers["location"])).text)
        assert "Queue 'emails' paused" in page
        assert (await admin.get_queue("emails")).paused is True
        queue_page = (await client.get("/queue?name=emails")).text
        assert "Resume queue" in queue_page and ">paused<" in queue_page
        assert ">paused<" in (await client.get("/")).text
        await client.post("/queue/resume", data={
            "name": "emails", "csrf": csrf_token(queue_page), "confirm": "yes"})
        assert (await admin.get_queue("emails")).paused is False
        missing = await client.post("/queue/pause", data={
            "name": "nope", "csrf": csrf_token(queue_page), "confirm": "yes"})
        notice = html.unescape((await client.get(missing.headers["location"])).text)
        assert "'nope' does not exist" in notice


async def test_purge_archive_follows_admin(scenario: Scenario) -> None:
    """Offered once ``Admin.purge_archive`` exists (issue 15); until then, absent (404)."""
    app = pgqrs.dashboard.app(scenario.dsn, actions=True)
    assert _actions.PURGE_ARCHIVE is hasattr(Admin, "purge_archive")
    async with client_for(app) as client:
        page = (await client.get("/queue?name=emails")).text
        if not _actions.PURGE_ARCHIVE:
            assert "Purge archive" not in page
            refused = await client.post("/queue/purge-archive", data={
                "name": "emails", "csrf": csrf_token(page), "confirm": "yes"})
            assert refused.status_code == 404
            return
        ask = await client.post("/queue/purge-archive", data={
            "name": "emails", "csrf": csrf_token(page)})
        assert "Please confirm" in ask.text and "retention" in ask.text
        done = await client.post("/queue/purge-archive", data={
            "name": "emails", "csrf": csrf_token(ask.text), "confirm": "yes"})
        assert done.status_code == 303
        notice = html.unescape((await client.get(done.headers["location"])).text)
        assert "archived messages of 'emails' purged" in notice


async def test_dead_state_follows_each_queues_threshold(dsn: str) -> None:
    """A message delivered once is dead on a queue that allows one delivery, pending on
    one that allows five; whatever the dashboard's own settings."""
    async with Admin(dsn) as admin:
        await admin.create_queue("strict", max_read_ct=1)
        await admin.create_queue("lenient")
    ids = {}
    for name in ("strict", "lenient"):
        async with (Producer(dsn, name, f"p-{name}", 1) as producer,
                    Consumer(dsn, name, f"c-{name}", 1) as consumer):
            ids[name] = await producer.enqueue({"queue": name})
            (message,) = await consumer.dequeue()
            assert await consumer.release([message.id]) == 1
    async with client_for(pgqrs.dashboard.app(dsn)) as client:
        for name, state in (("strict", "dead"), ("lenient", "pending")):
            page = (await client.get(f"/queue?name={name}&state={state}")).text
            assert f'href="/message?id={ids[name]}"' in page, (name, state)
            assert re.search(rf"max read ct</dt><dd>{1 if name == 'strict' else 5}<", page)
            message = (await client.get(f"/message?id={ids[name]}")).text
            assert f"s-{state}" in message, (name, state)
