"""One trace across two processes: the trace context travels in the message's headers."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pgqrs import Admin

SCRIPT = Path(__file__).with_name("otel_process.py")


async def _run(side: str, dsn: str) -> list[dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), side, dsn,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    spans: list[dict[str, Any]] = json.loads(out.decode().strip().splitlines()[-1])
    return spans


def _one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [s for s in spans if s["name"] == name]
    return found


async def test_the_trace_id_travels_from_the_producer_process_to_the_consumer(
        dsn: str) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("orders")
    produced = await _run("produce", dsn)
    consumed = await _run("consume", dsn)

    request, send = _one(produced, "POST /orders"), _one(produced, "send orders")
    process, charge = _one(consumed, "process orders"), _one(consumed, "charge card")
    assert send["kind"] == "PRODUCER" and process["kind"] == "CONSUMER"
    # Nothing but the message connects the two processes, and they share one trace.
    assert {s["trace_id"] for s in (request, send, process, charge)} == {request["trace_id"]}
    assert send["parent_id"] == request["span_id"]
    assert process["parent_id"] == send["span_id"]
    assert process["links"] == [send["span_id"]]
    assert charge["parent_id"] == process["span_id"]
    assert process["attributes"]["messaging.message.id"] == (
        send["attributes"]["messaging.message.id"])
    assert process["attributes"]["pgqrs.outcome"] == "succeeded"
