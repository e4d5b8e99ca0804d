"""``import pgqrs`` never loads OpenTelemetry; tracing is opt-in, and harmless without an SDK."""

from __future__ import annotations

import json
import subprocess
import sys


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def _loaded_by(statement: str) -> set[str]:
    out = _python(f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))")
    return set(json.loads(out))


def test_import_pgqrs_does_not_load_opentelemetry() -> None:
    loaded = _loaded_by("import pgqrs, pgqrs.cli\npgqrs.cli.build_parser()")
    assert "pgqrs._tracing" in loaded  # the probe sees the seam itself
    assert not {m for m in loaded
                if m.split(".")[0] == "opentelemetry" or m.startswith("pgqrs.otel")}


def test_the_extra_loads_it() -> None:
    assert "opentelemetry.trace" in _loaded_by("import pgqrs.otel")


def test_without_the_extra_the_error_says_what_to_install() -> None:
    code = ("import sys\nsys.modules['opentelemetry'] = None\n"
            "try:\n    import pgqrs.otel\nexcept ImportError as exc:\n    print(exc)\n")
    assert "pip install 'pgqrs[otel]'" in _python(code)


def test_instrumented_without_an_sdk_nothing_breaks_and_no_header_is_added(dsn: str) -> None:
    # A fresh interpreter: no tracer provider was ever set (the API's no-op applies).
    code = f"""
import asyncio, json
import pgqrs.otel
from opentelemetry import trace
from pgqrs import Admin, Consumer, Producer

async def main():
    async with Admin({dsn!r}) as admin:
        await admin.create_queue("work")
    pgqrs.otel.instrument()
    with trace.get_tracer("app").start_as_current_span("request"):
        async with Producer({dsn!r}, "work", "web", 1) as producer:
            await producer.enqueue({{"n": 1}}, headers={{"tenant": "acme"}})
            await producer.enqueue_batch([{{"n": 2}}])
    seen = []
    async def handler(message):
        seen.append(message.headers)
        assert not trace.get_current_span().is_recording()
    async with Consumer({dsn!r}, "work", "worker", 1) as consumer:
        handled = await consumer.consume(handler, stop_when_idle=True)
    print(json.dumps([handled, seen]))

asyncio.run(main())
"""
    handled, seen = json.loads(_python(code).strip().splitlines()[-1])
    assert handled == 2
    assert seen == [{"tenant": "acme"}, {}]
