"""Side-by-side benchmarks of pgqrs and a raw-asyncpg floor running the same SQL.

Run from the repository root::

    python -m benchmarks                    # full run (a few minutes), prints the table
    python -m benchmarks --smoke            # tiny run for CI (< 60 s), exits 0
    python -m benchmarks.studies.profiling  # where pgqrs spends client time per call
    python -m benchmarks.studies.ladder     # client cost of each layer, asyncpg to pgqrs

See ``docs/benchmarks.md`` for the scenarios, the method and the latest results.
"""

from __future__ import annotations
