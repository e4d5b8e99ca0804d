"""Helpers of the Prometheus tests: run the exporter as a process, scrape and parse."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def queue_values(samples: Samples, queue: str) -> dict[str, float]:
    """The per-queue gauges of ``queue`` (``pgqrs_`` prefix dropped)."""
    return {name.removeprefix("pgqrs_"): v for (name, labels), v in samples.items()
            if labels == frozenset({("queue", queue)})}


def workers(samples: Samples, queue: str) -> dict[str, float]:
    return {dict(labels)["status"]: v for (name, labels), v in samples.items()
            if name == "pgqrs_workers" and dict(labels).get("queue") == queue}


class Exporter:
    """A running ``pgqrs metrics serve``: its URL, and its stderr once it has ended."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stderr = ""


@contextlib.contextmanager
def exporter(dsn: str, *args: str) -> Iterator[Exporter]:
    """``pgqrs metrics serve --port 0`` as a subprocess, stopped with SIGTERM on exit.

    SIGTERM must end it cleanly (exit status 0).
    """
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PGQRS_TEST_DSN"}}
    env["PGQRS_DSN"] = dsn
    with subprocess.Popen([sys.executable, "-m", "pgqrs", "metrics", "serve", "--port", "0",
                           *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("pgqrs: serving metrics on "):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"exporter did not start: {line!r} {err!r}")
        running = Exporter(line.split()[4])
        try:
            yield running
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                _, running.stderr = proc.communicate(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == 0, running.stderr


async def scrape(url: str) -> tuple[Samples, str]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    return parse(response.text), response.text
