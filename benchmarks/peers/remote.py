"""The parent's side of a peer: its virtualenv, its subprocess and the JSON protocol.

The virtualenv lives in ``<venvs>/<peer>/`` (``.bench-venvs/`` at the repository root by
default, git-ignored), created with the parent's own Python and reused while its pinned
requirements (recorded in ``<venv>/bench-requirements.txt``) are unchanged. The
subprocess runs ``<venv>/bin/python -m benchmarks.peers.<peer>_side`` with the repository
root on ``PYTHONPATH`` (for ``benchmarks.api``/``scenarios``/``peers``; pgqrs is never
imported there) and stays up for the whole benchmark run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.peers import PEERS, Peer
from benchmarks.scenarios import Measurement

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENVS = REPO / ".bench-venvs"
_MARKER = "bench-requirements.txt"


def requirements(peer: Peer) -> list[str]:
    """What the peer's virtualenv installs: the pinned peer, and the parent's asyncpg."""
    return [*peer.requirements, f"asyncpg=={metadata.version('asyncpg')}"]


def ensure_venv(peer: Peer, venvs: Path = DEFAULT_VENVS) -> Path:
    """The Python of ``peer``'s virtualenv, created and installed first if needed."""
    venv = venvs / peer.name
    python = venv / "bin" / "python"
    wanted = "\n".join(requirements(peer)) + "\n"
    marker = venv / _MARKER
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"peers: installing {', '.join(requirements(peer))} into {venv}",
          file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", *requirements(peer)],
                   check=True, stdout=sys.stderr)
    marker.write_text(wanted)
    return python


class RemotePeer:
    """A peer running in its own virtualenv's Python; one request at a time."""

    def __init__(self, name: str, venvs: Path = DEFAULT_VENVS) -> None:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
        self.peer = PEERS[name]
        self.name = name
        self.venvs = venvs
        self.version = "?"
        self.versions: dict[str, str] = {}
        self.wake_up = "?"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def label(self) -> str:
        """``PgQueuer 1.6.0``: the name and the version the subprocess reported."""
        return f"{self.peer.label} {self.version}"

    async def start(self) -> None:
        """Create the virtualenv if needed, start the subprocess and say hello."""
        python = await asyncio.to_thread(ensure_venv, self.peer, self.venvs)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("PYTHONSTARTUP", None)
        self._process = await asyncio.create_subprocess_exec(
            str(python), "-m", self.peer.module, cwd=str(REPO), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 26)  # one answer line holds every latency of a run
        hello = await self._call({"op": "hello"})
        self.version, self.versions = hello["version"], hello["versions"]
        self.wake_up = hello["wake_up"]

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError(f"{self.name}: not started")
        process.stdin.write((json.dumps(request) + "\n").encode())
        await process.stdin.drain()
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the runner exited "
                               f"(code {await process.wait()}); see its stderr above")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name} failed:\n{answer['error']}")
        return answer

    async def install(self, dsn: str) -> None:
        """Install the peer's schema and queue in the template database ``dsn``."""
        await self._call({"op": "install", "dsn": dsn})

    async def run(self, scenario: str, kwargs: dict[str, Any], dsn: str, *,
                  latency: bool) -> Measurement:
        """Run ``benchmarks.scenarios.<scenario>(side, dsn, **kwargs)`` in the peer."""
        answer = await self._call({"op": "run", "scenario": scenario, "kwargs": kwargs,
                                   "dsn": dsn, "latency": latency})
        return Measurement(answer["messages"], answer["seconds"], answer["cpu_seconds"],
                           answer["latencies"])

    async def close(self) -> None:
        """Ask the subprocess to exit and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None and process.stdin is not None:
            try:
                process.stdin.write(b'{"op": "exit"}\n')
                await process.stdin.drain()
                process.stdin.close()
                await asyncio.wait_for(process.wait(), 30)
            except (TimeoutError, ConnectionError):
                process.kill()
                await process.wait()
