"""The peers' runners and the minimal-design floor of ``python -m benchmarks --peers``.

No database and no peer installed: the runner scripts are parsed, not run (they run in
the peers' own virtualenvs), and the minimal floor's SQL is compared with what the
performance issue states.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest

from benchmarks import minimal, report, svg
from benchmarks.peers import PEERS, Peer, serve
from benchmarks.scenarios import Measurement

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# What a peer's subprocess imports of ours: it has the peer, asyncpg and the stdlib only.
IN_PEER_VENV = ["api.py", "scenarios.py", "peers/__init__.py", "peers/serve.py",
                *(f"peers/{p.module.rsplit('.', 1)[1]}.py" for p in PEERS.values())]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("name", IN_PEER_VENV)
def test_what_a_peer_subprocess_imports_needs_no_pgqrs(name: str) -> None:
    allowed = {*sys.stdlib_module_names, "asyncpg", "benchmarks", "pgqueuer", "pgmq"}
    assert _imports(BENCHMARKS / name) <= allowed


@pytest.mark.parametrize("peer", PEERS.values(), ids=lambda p: p.name)
def test_peer_runner_is_a_module_serving_its_side(peer: Peer) -> None:
    path = BENCHMARKS.parent / (peer.module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(), str(path))
    assert "serve.main(" in ast.unparse(tree.body[-1])  # the `if __name__ == "__main__"`
    assert all(re.fullmatch(r"[\w-]+(\[\w+\])?==[\d.]+", r) for r in peer.requirements)


def test_minimal_floor_tables_are_the_issues() -> None:
    tables = dict(re.findall(r"CREATE TABLE (\w+) \((.*?)\);", minimal.SCHEMA, re.S))
    columns = {t: [c.split()[0:2] for c in body.strip().split(",\n")]
               for t, body in tables.items()}
    assert columns["minimal_queue"] == [["id", "bigserial"], ["payload", "jsonb"],
                                        ["vt", "timestamptz"], ["read_ct", "int"]]
    assert [c[0] for c in columns["minimal_archive"]][:4] == ["id", "payload", "vt", "read_ct"]
    # Only primary keys: no other index, constraint or trigger.
    assert minimal.SCHEMA.count("PRIMARY KEY") == 2
    assert not re.search(r"INDEX|REFERENCES|UNIQUE|TRIGGER|CHECK", minimal.SCHEMA, re.I)


def _flat(sql: str) -> str:
    return " ".join(sql.split())


def test_minimal_floor_claim_and_ack_are_the_issues() -> None:
    assert re.fullmatch(
        r"UPDATE minimal_queue SET vt = now\(\) \+ \$2::interval, read_ct = read_ct \+ 1 "
        r"WHERE id IN \(SELECT id FROM minimal_queue WHERE vt <= now\(\) ORDER BY id "
        r"FOR UPDATE SKIP LOCKED LIMIT \$1\) RETURNING id, read_ct, payload",
        _flat(minimal.CLAIM))
    assert re.fullmatch(
        r"WITH done AS \(DELETE FROM minimal_queue WHERE id = ANY\(\$1::bigint\[\]\) "
        r"RETURNING [\w, ]+\) INSERT INTO minimal_archive \([\w, ]+\) "
        r"SELECT [\w, ]+ FROM done RETURNING id", _flat(minimal.ACK))


async def test_runner_answers_hello_and_reports_failures() -> None:
    class Stub:
        name = "stub"
        distribution = "asyncpg"
        wake_up = "never"

    side = Stub()
    hello = await serve._answer(side, {"op": "hello"})  # type: ignore[arg-type]
    assert hello["name"] == "stub" and hello["version"] == hello["versions"]["asyncpg"]
    with pytest.raises(ValueError):
        await serve._answer(side, {"op": "nope"})  # type: ignore[arg-type]
    json.dumps(hello)  # what goes down the pipe


def test_side_by_side_table_and_bars_render() -> None:
    points = [report.Scenario("single", "single enqueue", "single_enqueue", {}, "per call"),
              report.Scenario("latency", "latency", "latency", {}, "e→h", kind="latency")]
    names = ("minimal", "floor", "pgqrs", "pgqueuer")
    results: report.Results = {
        "single": {n: [Measurement(1000, 1.0 + i, 0.1)] for i, n in enumerate(names)},
        "latency": {n: [Measurement(100, 1.0, 0.1, [0.001 * (i + 1)] * 3)]
                    for i, n in enumerate(names)},
    }
    table = report.side_by_side(points, results, {"pgqueuer": "PgQueuer 1.6.0"})
    assert "| single enqueue | 1,000 | 500 | 333 | 0.33 | 0.67 | 0.50 | 250 (1.33) | yes |" in table
    assert "PgQueuer 1.6.0" in table.splitlines()[0]
    chart = report.bars(points, results, {"pgqueuer": "PgQueuer 1.6.0"}, 1, "note")
    assert chart.startswith("<svg") and chart.count("<rect") > 8
    assert svg.render_bars([], title="empty").startswith("<svg")
