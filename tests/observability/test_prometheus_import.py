"""``import pgqrs`` (and the CLI) never load prometheus_client; the extra is opt-in."""

from __future__ import annotations

import json
import subprocess
import sys


def _loaded_by(statement: str) -> set[str]:
    code = (f"import json, sys\n{statement}\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return set(json.loads(out))


def test_import_pgqrs_and_its_cli_do_not_load_prometheus_client() -> None:
    loaded = _loaded_by("import pgqrs, pgqrs.cli\npgqrs.cli.build_parser()")
    assert "pgqrs.cli.metrics" in loaded  # the probe sees the metrics command's module
    assert not {m for m in loaded
                if m.split(".")[0] == "prometheus_client" or m.startswith("pgqrs.prometheus")}


def test_the_extra_loads_it() -> None:
    assert "prometheus_client" in _loaded_by("import pgqrs.prometheus")


def test_without_the_extra_the_error_says_what_to_install() -> None:
    # prometheus_client made unimportable (None in sys.modules), as when it is not installed.
    code = ("import sys\nsys.modules['prometheus_client'] = None\n"
            "try:\n    import pgqrs.prometheus\nexcept ImportError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "pip install 'pgqrs[prometheus]'" in out


def test_metrics_serve_without_the_extra_is_a_one_line_error() -> None:
    code = ("import sys\nsys.modules['prometheus_client'] = None\nfrom pgqrs.cli import main\n"
            "sys.exit(main(['metrics', 'serve', '--dsn', 'postgresql://u@127.0.0.1:1/db']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "pgqrs: error: pgqrs.prometheus needs prometheus_client: "
        "pip install 'pgqrs[prometheus]'"]
