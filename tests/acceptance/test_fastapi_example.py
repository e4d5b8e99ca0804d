"""Drive examples/fastapi_app.py with httpx's ASGI transport against the test database."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app.py"


async def counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM task_records")
        messages = await conn.fetchval("SELECT count(*) FROM pgqrs_messages")
        return int(rows), int(messages)
    finally:
        await conn.close()


async def test_row_and_message_commit_together_or_not_at_all(
        empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQRS_DSN", empty_dsn)
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fastapi_app_example", module)
    spec.loader.exec_module(module)
    app = module.app

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ok = await client.post("/tasks", json={"task_type": "email", "data": {"to": "a@b"}})
            assert ok.status_code == 200, ok.text
            body = ok.json()
            assert body["status"] == "queued" and body["message_id"] > 0
            assert await counts(empty_dsn) == (1, 1)

            rejected = await client.post("/tasks", json={"task_type": "reject", "data": {}})
            assert rejected.status_code == 422
            assert await counts(empty_dsn) == (1, 1)  # neither the row nor the message

            # The dashboard mounted on the app's engine shows the app's queue, read-only.
            page = await client.get("/pgqrs/")
            assert page.status_code == 200, page.text
            assert 'href="/pgqrs/queue?name=tasks"' in page.text and "read-only" in page.text
            queue = await client.get("/pgqrs/queue?name=tasks")
            assert "pending (1)" in queue.text and "email" in queue.text
            refused = await client.post("/pgqrs/workers/status",
                                        data={"id": "1", "status": "stopped"})
            assert refused.status_code == 403

    conn = await asyncpg.connect(empty_dsn)
    try:
        payload = await conn.fetchval("SELECT payload FROM pgqrs_messages")
        status = await conn.fetchval("SELECT status::text FROM pgqrs_workers")
    finally:
        await conn.close()
    assert '"task_id": 1' in payload and status == "stopped"
