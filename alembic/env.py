from __future__ import annotations

from pgqrs.migrate import run_env

run_env()
