"""The plugin as a host project meets it: its own pytest run, the guide's example, imports.

Each test here starts a separate ``python -m pytest -p pgqrs.testing`` in a temporary
directory, outside pgqrs's conftest, and checks its outcome.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "testing.md"
# pytest-asyncio warns when a project leaves this unset; the guide's pyproject.toml sets it.
LOOP_SCOPE = ("-o", "asyncio_default_fixture_loop_scope=function")
TITLED_BLOCK = re.compile(r'^```\w+ title="([\w.]+)"\n(.*?)^```', re.S | re.M)


def _host_env(**extra: str) -> dict[str, str]:
    """The environment of a host project's run: no DSN, so no accidental shared server."""
    drop = {"PGQRS_TEST_DSN", "DATABASE_URL", "PGQRS_DSN", "PYTEST_ADDOPTS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def _pytest(directory: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m pytest -q *args`` in ``directory``; any warning is an error."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-q", *args],
        cwd=directory, env=env, capture_output=True, text=True, timeout=180, check=False,
    )


@pytest.mark.timeout(200)
def test_the_guide_example_passes_in_a_project_of_its_own(tmp_path: Path) -> None:
    """docs/guides/testing.md's files, verbatim, with a throw-away server of their own."""
    files = dict(TITLED_BLOCK.findall(GUIDE.read_text()))
    assert set(files) == {"pyproject.toml", "shop.py", "conftest.py", "test_shop.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    result = _pytest(tmp_path, env=_host_env())  # plain `pytest`: pyproject.toml adds -p
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b2 passed\b", result.stdout), result.stdout


INNER_TEST = textwrap.dedent(
    """
    import json
    import os

    import asyncpg
    import pytest

    from pgqrs import Admin


    @pytest.mark.asyncio
    async def test_options(pgqrs_dsn, pgqrs_schema, pgqrs_template, pgqrs_empty_dsn,
                           pgqrs_server_dsn):
        assert pgqrs_schema == "jobs"
        assert pgqrs_server_dsn.startswith("postgresql://")  # the +asyncpg was dropped
        async with Admin(pgqrs_dsn, schema="jobs") as admin:
            await admin.verify()
        conn = await asyncpg.connect(pgqrs_dsn)
        try:
            tables = await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'jobs'")
        finally:
            await conn.close()
        assert tables >= 4
        with open(os.environ["PGQRS_PLUGIN_RECORD"], "w") as fh:
            json.dump([pgqrs_dsn, pgqrs_template, pgqrs_empty_dsn], fh)
    """
)


async def _databases(server_dsn: str) -> set[str]:
    conn = await asyncpg.connect(server_dsn)
    try:
        return {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


@pytest.mark.timeout(200)
@pytest.mark.parametrize("how", ["command line", "ini file"])
async def test_given_server_and_schema_and_cleanup(pgqrs_server_dsn: str, tmp_path: Path,
                                                   how: str) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    record = tmp_path / "record.json"
    # The server as a SQLAlchemy URL, to show the plugin accepts that form too.
    given = pgqrs_server_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    args = ["-p", "pgqrs.testing", *LOOP_SCOPE]
    if how == "command line":
        args += ["--pgqrs-dsn", given, "--pgqrs-schema", "jobs"]
        env = _host_env(PGQRS_PLUGIN_RECORD=str(record))
    else:
        (tmp_path / "pytest.ini").write_text("[pytest]\npgqrs_schema = jobs\n")
        env = _host_env(PGQRS_PLUGIN_RECORD=str(record), PGQRS_TEST_DSN=given)
    result = _pytest(tmp_path, *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    clone, template, empty = (dsn.rsplit("/", 1)[1] for dsn in json.loads(record.read_text()))
    assert template.startswith("pgqrs_tmpl_")
    assert clone.startswith("pgqrs_t_") and empty.startswith("pgqrs_t_") and clone != empty
    names = {clone, template, empty}
    # Every database the run created on the shared server is gone.
    assert not names & await _databases(pgqrs_server_dsn)


@pytest.mark.timeout(200)
def test_an_unreachable_server_fails_the_tests_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text("def test_db(pgqrs_dsn):\n    pass\n")
    dead = "postgresql://postgres:s3cret-pw@127.0.0.1:1/postgres"  # nothing listens on port 1
    result = _pytest(tmp_path, "-p", "pgqrs.testing", *LOOP_SCOPE, "--pgqrs-dsn", dead,
                     env=_host_env())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert "could not create a test database on postgresql://postgres:***@127.0.0.1:1" in (
        result.stdout)
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_import_pgqrs_does_not_import_the_testing_package() -> None:
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import pgqrs

        SKIP = {"pgqrs.testing", "pgqrs.migrations", "pgqrs.__main__"}

        def import_all(package):  # every module of the library, without entering SKIP
            for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                # __main__ modules run their command line when imported.
                if info.name not in SKIP and not info.name.endswith(".__main__"):
                    module = importlib.import_module(info.name)
                    if info.ispkg:
                        import_all(module)

        import_all(pgqrs)
        assert len([m for m in sys.modules if m.startswith("pgqrs.")]) > 15
        print(sorted(m for m in sys.modules if m.startswith("pgqrs.testing")))
        import pgqrs.testing  # the launcher: no pytest, no fixtures module
        print(sorted(m for m in sys.modules
                     if m.split(".")[0] in ("pytest", "_pytest", "pytest_asyncio")
                     or m == "pgqrs.testing.plugin"))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout
