"""The standalone server, ``python -m pgqrs.dashboard`` (what ``pgqrs dashboard`` runs),
end to end in a subprocess."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from pgqrs.dashboard._server import exposure_warning

from .conftest import free_port


def env_without_dsn() -> dict[str, str]:
    drop = {"PGQRS_DSN", "DATABASE_URL", "PGQRS_DASHBOARD_TOKEN", "PGQRS_DASHBOARD_BASIC_AUTH"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_serves_on_loopback_with_a_token_until_interrupted(dsn: str) -> None:
    port = free_port()
    with_password = dsn.replace("://postgres@", "://postgres:Hush-Hush@", 1)
    env = {**env_without_dsn(), "PGQRS_DASHBOARD_TOKEN": "let-me-in"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgqrs.dashboard", "--dsn", with_password, "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert response.status_code == 401
        page = httpx.get(f"http://127.0.0.1:{port}/",
                         headers={"Authorization": "Bearer let-me-in"}, timeout=5)
        assert page.status_code == 200 and "read-only" in page.text
        assert "Hush-Hush" not in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/ (read-only, token)" in err
    assert "Hush-Hush" not in out + err


def run_main(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgqrs.dashboard", *args],
                          env=env_without_dsn(), capture_output=True, text=True, timeout=60)


def test_errors_are_one_line_with_the_fix(empty_dsn: str) -> None:
    missing = run_main()
    assert missing.returncode == 1 and "No database given" in missing.stderr
    not_installed = run_main("--dsn", empty_dsn)
    assert not_installed.returncode == 1 and "pgqrs install" in not_installed.stderr
    assert "Traceback" not in not_installed.stderr
    bad_auth = run_main("--dsn", empty_dsn, "--basic-auth", "no-colon")
    assert bad_auth.returncode == 1 and "USER:PASSWORD" in bad_auth.stderr
    usage = run_main("--port", "eighty")
    assert usage.returncode == 2


def test_warns_when_listening_beyond_this_machine_unguarded() -> None:
    assert exposure_warning("127.0.0.1", guarded=False, actions=True) is None
    assert exposure_warning("::1", guarded=False, actions=True) is None
    assert exposure_warning("localhost", guarded=False, actions=False) is None
    assert exposure_warning("0.0.0.0", guarded=True, actions=True) is None
    warning = exposure_warning("0.0.0.0", guarded=False, actions=True)
    assert warning is not None and "and change them" in warning


# -- `pgqrs dashboard`: the same server as a command of the pgqrs CLI ----------------------


def _wait_for(url: str, proc: subprocess.Popen[str], **kwargs: object) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url, timeout=2, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_pgqrs_dashboard_honours_global_options_and_stops_cleanly(
        dsn: str, stop: signal.Signals) -> None:
    """``--dsn``/``--schema`` of the pgqrs command line apply; SIGTERM and Ctrl-C end it
    gracefully with exit status 0."""
    asyncio.run(_install_schema(dsn, "dash"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgqrs", "--schema", "dash", "dashboard", "--port", str(port),
         "--dsn", dsn, "--refresh", "0", "--allow-actions"],
        env=env_without_dsn(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        page = _wait_for(f"http://127.0.0.1:{port}/", proc)
        assert page.status_code == 200 and "in-dash" in page.text  # the --schema's queue
    finally:
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/ (actions allowed) on" in err
    assert "Traceback" not in err


async def _install_schema(dsn: str, schema: str) -> None:
    from pgqrs import Admin

    async with Admin(dsn, schema=schema) as admin:
        await admin.install()
        await admin.create_queue("in-dash")


def test_pgqrs_dashboard_errors_and_options() -> None:
    def pgqrs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgqrs", *args], env=env_without_dsn(),
                              capture_output=True, text=True, timeout=60)

    missing = pgqrs("dashboard")
    assert missing.returncode == 1 and "No database given" in missing.stderr
    assert pgqrs("dashboard", "--port", "eighty").returncode == 2
    bad_auth = pgqrs("dashboard", "--dsn", "postgresql://u@127.0.0.1:1/db",
                     "--basic-auth", "no-colon")
    assert bad_auth.returncode == 1 and "USER:PASSWORD" in bad_auth.stderr


def test_pgqrs_dashboard_takes_the_dashboards_own_options() -> None:
    """The CLI declares the options again (``pgqrs --help`` works without the extra):
    the same flags as ``python -m pgqrs.dashboard``, the defaults left to its parser."""
    from pgqrs.cli import build_parser
    from pgqrs.dashboard import build_parser as dashboard_parser

    def flags(parser: argparse.ArgumentParser) -> dict[str, object]:
        return {a.option_strings[-1]: (a.type, a.nargs, a.const)
                for a in parser._actions if a.option_strings}

    cli = build_parser()
    (commands,) = [a for a in cli._actions if isinstance(a, argparse._SubParsersAction)]
    command = flags(commands.choices["dashboard"])
    own = flags(dashboard_parser())
    common = {"--help", "--dsn", "--schema", "--format", "--quiet", "--verbose"}
    assert {k: v for k, v in command.items() if k not in common} == {
        k: v for k, v in own.items() if k not in common}
    assert {"--dsn", "--schema"} <= set(own)
