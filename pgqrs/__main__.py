"""``python -m pgqrs``: the command line."""

from __future__ import annotations

from pgqrs.cli import main

raise SystemExit(main())
