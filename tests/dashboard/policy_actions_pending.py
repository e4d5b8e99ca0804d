"""Pause / resume a queue and purge its archive from the dashboard (SPEC §12, §14).

NOT COLLECTED YET (the file name does not start with ``test_``): these actions call
``Admin.pause_queue``, ``Admin.resume_queue`` and ``Admin.purge_archive``, which arrive with
the queue-policy work. To wire them: set ``POLICY_ACTIONS = True`` in
``pgqrs/dashboard/_actions.py``, rename this file to ``test_policy_actions.py``, and delete
``test_policy_actions_are_off_until_admin_has_them`` from ``test_http.py``.
"""

from __future__ import annotations

import pgqrs.dashboard
from pgqrs import Admin

from .conftest import Scenario, client_for, csrf_token


async def test_pause_and_resume_a_queue(scenario: Scenario) -> None:
    app = pgqrs.dashboard.app(scenario.dsn, actions=True)
    async with Admin(scenario.dsn) as admin, client_for(app) as client:
        page = (await client.get("/queue?name=emails")).text
        assert "Pause queue" in page
        done = await client.post("/queue/pause", data={
            "name": "emails", "csrf": csrf_token(page), "confirm": "yes"})
        assert done.status_code == 303
        page = (await client.get(done.headers["location"])).text
        assert "Queue 'emails' paused" in page
        assert (await admin.get_queue("emails")).paused is True  # type: ignore[attr-defined]
        queue_page = (await client.get("/queue?name=emails")).text
        assert "Resume queue" in queue_page and ">paused<" in queue_page
        assert ">paused<" in (await client.get("/")).text
        await client.post("/queue/resume", data={
            "name": "emails", "csrf": csrf_token(queue_page), "confirm": "yes"})
        assert (await admin.get_queue("emails")).paused is False  # type: ignore[attr-defined]


async def test_purge_archive_per_retention(scenario: Scenario) -> None:
    app = pgqrs.dashboard.app(scenario.dsn, actions=True)
    async with client_for(app) as client:
        page = (await client.get("/queue?name=emails")).text
        ask = await client.post("/queue/purge-archive", data={
            "name": "emails", "csrf": csrf_token(page)})
        assert "Please confirm" in ask.text and "retention" in ask.text
        done = await client.post("/queue/purge-archive", data={
            "name": "emails", "csrf": csrf_token(ask.text), "confirm": "yes"})
        assert done.status_code == 303
        notice = (await client.get(done.headers["location"])).text
        assert "archived messages of 'emails' purged" in notice
