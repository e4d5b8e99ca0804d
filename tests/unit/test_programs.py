"""Tests needing a program README does not install skip locally and fail in CI.

``require_program`` on its own, then the real pgbouncer tests run in a child pytest with
``PATH`` narrowed so that pgbouncer cannot be found (whether or not this machine has it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _programs import require_program

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "apt-get install -y pgbouncer"


def test_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = tmp_path / "pgqrs-fake-program"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "1")
    assert require_program("pgqrs-fake-program", install="true") == str(program)


def test_missing_skips_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install it with `apt-get install -y x`"):
        require_program("x", install="apt-get install -y x")
    monkeypatch.setenv("CI", "")  # empty is unset
    with pytest.raises(pytest.skip.Exception):
        require_program("x", install="apt-get install -y x")


def test_missing_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install it with `apt-get install -y x`"):
        require_program("x", install="apt-get install -y x")


def _path_without(program: str) -> str:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not os.access(os.path.join(d, program),
                                                                     os.X_OK))


def _run_pgbouncer_tests(tmp_path: Path, ci: str | None) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run tests/reliability/test_pgbouncer.py without pgbouncer on PATH; return the exit
    code and, per test, its outcome (passed/skipped/failure/error) and message."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = _path_without("pgbouncer")
    if ci is not None:
        env["CI"] = ci
    report = tmp_path / f"report-{ci}.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", "tests/reliability/test_pgbouncer.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        child = next((c for c in case if c.tag in ("skipped", "failure", "error")), None)
        outcome = "passed" if child is None else child.tag
        outcomes[case.get("name", "")] = (outcome, "" if child is None
                                          else child.get("message", ""))
    assert outcomes, proc.stdout + proc.stderr
    return proc.returncode, outcomes


def test_pgbouncer_tests_skip_locally_without_pgbouncer(tmp_path: Path) -> None:
    code, outcomes = _run_pgbouncer_tests(tmp_path, ci=None)
    assert code == 0
    assert "test_public_api_through_pgbouncer" in outcomes
    for name, (outcome, message) in outcomes.items():
        assert outcome == "skipped", name
        assert f"install it with `{INSTALL}`" in message, name


def test_pgbouncer_tests_fail_in_ci_without_pgbouncer(tmp_path: Path) -> None:
    code, outcomes = _run_pgbouncer_tests(tmp_path, ci="1")
    assert code == 1
    assert outcomes["test_pgbouncer_is_installed"][0] == "failure"
    for name, (outcome, message) in outcomes.items():
        # A test fails; one whose pgbouncer fixture failed is reported as an error.
        assert outcome in ("failure", "error"), name
        assert f"install it with `{INSTALL}`" in message, name
