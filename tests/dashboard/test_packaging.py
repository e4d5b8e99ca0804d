"""The wheel ships the dashboard's templates, and ``pgqrs[dashboard]`` names its stack."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "pgqrs" / "dashboard" / "templates"


def test_wheel_ships_the_templates(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                          "--outdir", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = tmp_path.glob("pgqrs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = sorted(p.name for p in TEMPLATES.glob("*.html"))
    assert len(templates) >= 8
    for name in templates:
        assert f"pgqrs/dashboard/templates/{name}" in names


def test_the_extra_and_ci_install_what_the_dashboard_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {d.split(">")[0].split("[")[0] for d in extras["dashboard"]}
    assert wanted == {"starlette", "jinja2", "uvicorn"}
    assert any("dashboard" in d for d in extras["test"])
    assert "chromium chromium-driver" in (ROOT / ".ci" / "run").read_text()
