"""Everything one benchmark run measures, behind one interface.

* ``floor``: the same-SQL floor (``sides.FloorSide``), in this process, pgqrs's schema.
* ``pgqrs``: pgqrs itself (``sides.PgqrsSide``), in this process, pgqrs's schema.
* ``minimal``: the minimal-design floor (``minimal.MinimalSide``), in this process, its
  own two-table schema.
* a peer (``--peers``): in a subprocess of its own virtualenv (``peers.remote``), its
  own schema.

Each contender clones its fresh databases from the template of its schema
(``server.Databases``); the two pgqrs-schema contenders share one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from benchmarks import scenarios
from benchmarks.api import Side
from benchmarks.minimal import MinimalSide
from benchmarks.peers.remote import DEFAULT_VENVS, RemotePeer
from benchmarks.scenarios import Measurement
from benchmarks.server import Databases, install_pgqrs
from benchmarks.sides import FloorSide, PgqrsSide


class Contender(Protocol):
    """Runs a scenario, by name, on a fresh database of its template."""

    name: str
    wake_up: str

    @property
    def label(self) -> str: ...

    async def install(self, dsn: str) -> None:
        """Fill the template database ``dsn`` with this contender's schema."""
        ...

    async def run(self, scenario: str, kwargs: Mapping[str, Any], dsn: str, *,
                  latency: bool) -> Measurement: ...

    async def close(self) -> None: ...


class Local:
    """A ``benchmarks.api.Side`` run in this process."""

    def __init__(self, side: Side, label: str,
                 install: Callable[[str], Awaitable[None]]) -> None:
        self.side = side
        self.name = side.name
        self.wake_up = side.wake_up
        self._label = label
        self._install = install

    @property
    def label(self) -> str:
        return self._label

    async def install(self, dsn: str) -> None:
        await self._install(dsn)

    async def run(self, scenario: str, kwargs: Mapping[str, Any], dsn: str, *,
                  latency: bool) -> Measurement:
        await self.side.prepare(dsn, latency=latency)
        function = getattr(scenarios, scenario)
        m: Measurement = await function(self.side, dsn, **kwargs)
        return m

    async def close(self) -> None:
        return None


def local(notify: str, poll_interval: float, *, minimal: bool = True) -> list[Contender]:
    """The in-process contenders: same-SQL floor, pgqrs and (``minimal``) the minimal
    floor. ``notify`` is ``--floor-notify`` (both floors)."""
    found: list[Contender] = [
        Local(FloorSide(notify), "same-SQL floor", install_pgqrs),
        Local(PgqrsSide(poll_interval), "pgqrs", install_pgqrs),
    ]
    if minimal:
        found.append(Local(MinimalSide(notify), "minimal-design floor", MinimalSide.install))
    return found


async def start_peers(names: Sequence[str], venvs: Path = DEFAULT_VENVS) -> list[Contender]:
    """Install (if needed) and start each peer's subprocess."""
    started: list[Contender] = []
    try:
        for name in names:
            peer = RemotePeer(name, venvs)
            await peer.start()
            started.append(peer)
    except BaseException:
        for contender in started:
            await contender.close()
        raise
    return started


class Templates:
    """One template database per schema; which one each contender clones."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._by_schema: dict[str, Databases] = {}
        self._of: dict[str, Databases] = {}

    async def add(self, contender: Contender) -> None:
        """Create (once per schema) the template ``contender`` runs on."""
        schema = "pgqrs" if contender.name in ("floor", "pgqrs") else contender.name
        if schema not in self._by_schema:
            dbs = Databases(self.dsn, schema, contender.install)
            await dbs.create_template()
            self._by_schema[schema] = dbs
        self._of[contender.name] = self._by_schema[schema]

    def of(self, contender: Contender) -> Databases:
        """The template (and fresh clones) of ``contender``."""
        return self._of[contender.name]

    async def drop(self) -> None:
        """Drop every template."""
        for dbs in self._by_schema.values():
            await dbs.drop_template()
