"""With neither extra installed, pgqrs works and tries to import neither.

The interpreter below makes ``opentelemetry`` and ``prometheus_client`` unimportable (as
if not installed: any import of them raises ImportError), then enqueues, consumes with
an ``on_settled`` and an ``on_claimed`` hook, reads the queue's metrics and builds the
CLI's parser. Nothing fails, and neither package (nor pgqrs.otel, pgqrs.prometheus) was
loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_pgqrs_runs_with_neither_extra_installed(dsn: str) -> None:
    code = f"""
import asyncio, json, sys
for missing in ("opentelemetry", "prometheus_client"):
    sys.modules[missing] = None  # import raises ImportError, as when not installed
import pgqrs, pgqrs.cli
from pgqrs import Admin, Consumer, Producer

async def main():
    async with Admin({dsn!r}) as admin:
        await admin.create_queue("work")
        async with Producer({dsn!r}, "work", "web", 1) as producer:
            await producer.enqueue_batch([{{"n": n}} for n in range(3)])
        settled, claimed = [], []
        async def handler(message):
            return None
        async with Consumer({dsn!r}, "work", "worker", 1) as consumer:
            handled = await consumer.consume(
                handler, stop_when_idle=True, on_settled=settled.append,
                on_claimed=lambda batch: claimed.append(len(batch)))
        metrics = await admin.queue_metrics("work")
    return handled, len(settled), sum(claimed), metrics.archived_messages

result = asyncio.run(main())
pgqrs.cli.build_parser()
loaded = sorted(m for m in sys.modules if sys.modules[m] is not None and (
    m.split(".")[0] in ("opentelemetry", "prometheus_client")
    or m.startswith(("pgqrs.otel", "pgqrs.prometheus"))))
print(json.dumps([result, loaded]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == [3, 3, 3, 3]
    assert loaded == []
