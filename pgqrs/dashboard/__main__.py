"""``python -m pgqrs.dashboard``: the same as ``pgqrs dashboard``."""

from __future__ import annotations

from pgqrs.dashboard._server import main

raise SystemExit(main())
