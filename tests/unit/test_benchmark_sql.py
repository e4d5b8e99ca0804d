"""The benchmark floor runs pgqrs's own SQL (``benchmarks/pgqrs_sql.py``), not copies.

No database: the statements are compiled, compared and bound, not run (``python -m
benchmarks --smoke`` in ``.ci/run`` runs them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import pgqrs_sql
from benchmarks.sides import FloorConsumer, FloorProducer

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _shape(sql: str) -> str:
    return re.sub(r"\$\d+", "$n", sql)


@pytest.mark.parametrize("name,floor", [("_ENQUEUE", pgqrs_sql.enqueue),
                                        ("_ENQUEUE_BATCH", pgqrs_sql.enqueue_batch)])
def test_floor_enqueue_is_pgqrs_enqueue_without_the_notify(
        name: str, floor: Callable[[], pgqrs_sql.Compiled]) -> None:
    full = pgqrs_sql.compiled(name).sql
    bare = floor().sql
    assert "pg_notify" in full
    assert "pg_notify" not in bare
    assert bare.startswith("INSERT INTO ")
    assert _shape(bare) in _shape(full)  # the same INSERT, parameters renumbered


def test_floor_claim_and_archive_are_pgqrs_statements() -> None:
    assert "FOR UPDATE SKIP LOCKED" in pgqrs_sql.claim().sql
    assert "pgqrs_archive" in pgqrs_sql.archive().sql
    assert pgqrs_sql.claim() == pgqrs_sql.compiled("_DEQUEUE")
    assert pgqrs_sql.archive() == pgqrs_sql.compiled("_ARCHIVE")
    assert pgqrs_sql.archive_and_claim() == pgqrs_sql.compiled("_ARCHIVE_AND_DEQUEUE")
    assert "FOR UPDATE SKIP LOCKED" in pgqrs_sql.archive_and_claim().sql


def test_floor_passes_every_parameter_pgqrs_statements_take() -> None:
    # The floor binds its arguments on construction; a parameter pgqrs's statement gained
    # and the floor does not pass raises KeyError here instead of running as NULL.
    producer = FloorProducer(None, 1, 2, None, None)
    consumer = FloorConsumer(None, 1, 2, None, None, listening=False)
    for args, statement in ((producer._one_args('{"a":1}'), pgqrs_sql.enqueue()),
                            (producer._many_args(['{"a":1}']), pgqrs_sql.enqueue_batch()),
                            (consumer._claim_args(10), pgqrs_sql.claim()),
                            (consumer._archive_args([1]), pgqrs_sql.archive()),
                            (consumer._fused_args([1], 10), pgqrs_sql.archive_and_claim())):
        assert len(args) == len(statement.names)
        # NULL is a real value only for headers (a message without headers).
        assert None not in [a for n, a in zip(statement.names, args, strict=True)
                            if n != "p_headers"]
    with pytest.raises(KeyError):
        pgqrs_sql.claim().args(p_queue_id=1)


# Files that write pgqrs tables directly on purpose, and why (never a hot-path statement).
SEEDERS = {
    "studies/maintenance.py": "bulk-fills a 10M-row archive with generate_series",
    # Its own two tables and its own SKIP LOCKED claim, on purpose
    # (tests/unit/test_benchmark_peers.py checks that SQL).
    "minimal.py": "the minimal-design floor",
}


def test_no_hand_copied_claim_or_archive_in_benchmarks() -> None:
    pattern = re.compile(r"FOR UPDATE SKIP LOCKED|INTO pgqrs_archive", re.IGNORECASE)
    files = {str(p.relative_to(BENCHMARKS)): p for p in BENCHMARKS.rglob("*.py")}
    copies = [name for name, path in files.items()
              if name not in SEEDERS and pattern.search(path.read_text())]
    assert copies == []
