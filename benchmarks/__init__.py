"""Side-by-side benchmarks of pgqrs, a raw-asyncpg floor running the same SQL, a
minimal-design floor and, with ``--peers``, other PostgreSQL queues for Python.

Run from the repository root::

    python -m benchmarks                    # full run (a few minutes), prints the tables
    python -m benchmarks --smoke            # tiny run for CI (< 60 s), exits 0
    python -m benchmarks --peers pgqueuer,pgmq  # with the peers, each in its own venv
    python -m benchmarks.studies.profiling  # where pgqrs spends client time per call
    python -m benchmarks.studies.ladder     # client cost of each layer, asyncpg to pgqrs
    python -m benchmarks.studies.schema_cost  # server cost per statement vs minimal design

Modules: ``api`` (the client API every side offers), ``scenarios`` (the timed loops,
written once), ``sides`` (pgqrs and the same-SQL floor), ``minimal`` (the minimal-design
floor), ``peers`` (the peers' runners and their subprocesses), ``contenders`` (all of
them behind one interface), ``server`` (PostgreSQL and fresh databases), ``report`` and
``svg`` (tables and charts), ``run`` (the command line).

See ``docs/benchmarks.md`` for the scenarios, the method and the latest results.
"""

from __future__ import annotations
