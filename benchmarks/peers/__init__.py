"""The peers: other PostgreSQL queues for Python, measured next to pgqrs.

``python -m benchmarks --peers pgqueuer,pgmq`` installs each peer, at a pinned version,
in a virtualenv of its own (``.bench-venvs/`` at the repository root, git-ignored) and
runs the same scenarios (``benchmarks.scenarios``) through the peer's own public API in a
subprocess of that virtualenv's Python, interleaved with pgqrs and both floors:

* ``serve``: the subprocess's side of a one-line-per-message JSON protocol on its
  stdin/stdout (``hello``, ``install``, ``run``, ``exit``); the scenario runs, and is
  timed, entirely inside the subprocess.
* ``remote``: the parent's side: the virtualenv, the subprocess and the protocol.
* ``pgqueuer_side``, ``pgmq_side``: each peer's producer, consumer and worker loop in
  terms of ``benchmarks.api``.

Nothing here (nor in ``benchmarks.api`` and ``benchmarks.scenarios``, which the
subprocess imports) imports pgqrs or SQLAlchemy: a peer's virtualenv has the peer,
asyncpg and the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """One peer: its runner module, what its virtualenv installs and how it is shown."""

    name: str
    label: str
    module: str
    requirements: tuple[str, ...]
    """Pinned: the peer itself (with the extra that brings asyncpg). asyncpg is pinned
    at run time to the version the parent runs, so every side uses the same driver."""


PEERS: dict[str, Peer] = {
    "pgqueuer": Peer("pgqueuer", "PgQueuer", "benchmarks.peers.pgqueuer_side",
                     ("pgqueuer[asyncpg]==1.6.0",)),
    "pgmq": Peer("pgmq", "pgmq", "benchmarks.peers.pgmq_side",
                 ("pgmq[async]==1.1.4",)),
}
