"""The peer subprocess's side of the protocol: read a request line, answer one line.

Requests (JSON objects, one per line on stdin) and answers (one per line on the
original stdout; everything a library prints goes to stderr instead):

* ``{"op": "hello"}`` → ``{"name", "version", "versions", "wake_up"}``
* ``{"op": "install", "dsn"}`` → ``{}``: install the peer's schema and the benchmark
  queue in the (template) database ``dsn``.
* ``{"op": "run", "scenario", "kwargs", "dsn", "latency"}`` → ``{"messages", "seconds",
  "cpu_seconds", "latencies"}``: ``side.prepare(dsn)``, then the scenario function of
  ``benchmarks.scenarios`` with this peer's side, timed here, in this process.
* ``{"op": "exit"}`` → ``{}``, then the process exits.

A failure answers ``{"error": traceback}`` and the process keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import traceback
from importlib import metadata
from typing import IO, Any, Protocol

from benchmarks import api, scenarios


class PeerSide(api.Side, Protocol):
    """A ``benchmarks.api.Side`` that also installs its schema and names its version."""

    distribution: str
    """The PyPI distribution whose version is reported."""

    async def install(self, dsn: str) -> None: ...


def _versions(side: PeerSide) -> dict[str, str]:
    names = [side.distribution, "asyncpg"]
    return {"python": platform.python_version(),
            **{n: metadata.version(n) for n in names}}


async def _answer(side: PeerSide, request: dict[str, Any]) -> dict[str, Any]:
    op = request["op"]
    if op == "hello":
        versions = _versions(side)
        return {"name": side.name, "version": versions[side.distribution],
                "versions": versions, "wake_up": side.wake_up}
    if op == "install":
        await side.install(request["dsn"])
        return {}
    if op == "run":
        run = getattr(scenarios, request["scenario"])
        await side.prepare(request["dsn"], latency=bool(request["latency"]))
        m: scenarios.Measurement = await run(side, request["dsn"], **request["kwargs"])
        return {"messages": m.messages, "seconds": m.seconds, "cpu_seconds": m.cpu_seconds,
                "latencies": m.latencies}
    if op == "exit":
        return {}
    raise ValueError(f"unknown op {op!r}")


async def _serve(side: PeerSide, out: IO[str]) -> None:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        request = json.loads(line)
        try:
            answer = await _answer(side, request)
        except Exception:
            answer = {"error": traceback.format_exc()}
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if request["op"] == "exit":
            return


def main(side: PeerSide) -> None:
    """Serve requests for ``side`` until ``exit`` or end of input."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    sys.stdout = sys.stderr
    asyncio.run(_serve(side, out))
