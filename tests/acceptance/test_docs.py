"""Every ```python block in README.md and docs/*.md runs, against a fresh database.

Blocks are complete programs; ``localhost/mydb`` in them is pointed at the test database.
Fragments that cannot run on their own (an ``env.py`` excerpt) are fenced as ```py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        for index, match in enumerate(FENCE.finditer(page.read_text())):
            found.append((f"{page.relative_to(ROOT)}#{index}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), blocks(), ids=[b[0] for b in blocks()])
def test_doc_example_runs(where: str, code: str, empty_dsn: str, tmp_path: Path) -> None:
    parts = urlsplit(empty_dsn)
    code = code.replace("://localhost/mydb", f"://{parts.netloc}{parts.path}")
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PGQRS_DSN": empty_dsn}
    result = subprocess.run([sys.executable, "-W", "error", str(script)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{where}\n{result.stdout}\n{result.stderr}"
    assert result.stderr == "", result.stderr
