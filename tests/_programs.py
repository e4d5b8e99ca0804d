"""External programs that some tests need and README's setup does not install.

README's test command must pass on a machine that has nothing but Python, so a test that
needs such a program (pgbouncer; later Chromium) skips there, with a reason naming the
install command. In CI (``CI`` set to any non-empty value) the program is required: a
missing one fails the test, and ``.ci/run`` installs it beforehand.

Programs are looked up on ``PATH`` only (no hard-coded fallback directories), so a run can
hide one by narrowing ``PATH``; Debian puts daemons such as pgbouncer in ``/usr/sbin``,
which is on root's ``PATH`` and which ``.ci/run`` adds for everyone else.

Import it as ``from _programs import require_program``: ``tests/`` is on ``sys.path``
because ``tests/conftest.py`` is a rootdir conftest outside a package.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """Whether this run is CI's: ``CI`` set to any non-empty value."""
    return bool(os.environ.get("CI"))


def require_program(name: str, *, install: str) -> str:
    """Return the path of program ``name`` found on ``PATH``.

    When it is missing, skip the calling test (or fixture) with a reason naming
    ``install``, the command that installs it; in CI, fail it instead.
    """
    found = shutil.which(name)
    if found is not None:
        return found
    reason = f"{name} is not installed (not found on PATH); install it with `{install}`"
    if in_ci():
        pytest.fail(f"{reason}. CI is set: these tests must run, not skip.", pytrace=False)
    pytest.skip(reason)
