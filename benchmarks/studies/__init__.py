"""One-off studies behind docs/benchmarks.md: not run by CI, kept to reproduce its tables.

Run from the repository root::

    python -m benchmarks.studies.ladder     # client cost of each layer, asyncpg to pgqrs
    python -m benchmarks.studies.profiling  # where pgqrs spends client time per call
    python -m benchmarks.studies.schema_cost  # server cost per statement vs minimal design
"""

from __future__ import annotations
