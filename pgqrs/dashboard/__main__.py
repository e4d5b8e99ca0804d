"""``python -m pgqrs.dashboard``: the same as ``pgqrs dashboard``."""

from __future__ import annotations

from pgqrs.dashboard._server import main

if __name__ == "__main__":  # importing the module (tools walking the package) runs nothing
    raise SystemExit(main())
