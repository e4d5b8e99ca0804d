"""Run every scenario for pgqrs, both floors and the chosen peers; print the comparison.

Usage (from the repository root)::

    python -m benchmarks [--smoke] [--dsn URL] [--repeats N] [--only KEYS]
                         [--peers pgqueuer,pgmq] [--json results.json]
                         [--svg docs/benchmarks.svg] [--bars-svg docs/benchmarks-peers.svg]
                         [--check]

Each (repeat, scenario) runs every contender (the same-SQL floor, pgqrs, the
minimal-design floor, then the peers) back to back, in alternating order, each in a
fresh database. The tables show the median over the repeats of every figure, and as
ratios the median of the per-repeat ratios (each from runs of the same repeat). Without
``--dsn`` (or ``PGQRS_DSN``) a throw-away PostgreSQL is started the way the tests start
theirs, with PostgreSQL's default durability settings. Peers (``--peers``) are installed
in virtualenvs of their own (``benchmarks.peers``); ``--smoke`` never installs them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import contenders, report
from benchmarks.contenders import Contender, Templates
from benchmarks.peers import PEERS
from benchmarks.peers.remote import DEFAULT_VENVS
from benchmarks.report import Results, Scenario
from benchmarks.scenarios import Measurement
from benchmarks.server import default_tmpdir, server, server_version


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does."""

    single: int = 5000
    batch_messages: int = 100_000
    batch: int = 100
    drain_single: int = 20_000
    drain_batch: int = 20_000
    drain_batch_size: int = 50
    drain_consumers: int = 4
    loop: int = 20_000
    loop_batch: int = 50
    latency_rate: float = 200.0
    latency_seconds: float = 5.0
    latency_batch: int = 10
    repeats: int = 3
    sweeps: bool = True
    enqueue_batches: tuple[int, ...] = (1, 10, 50, 100, 500, 1000)
    drain_batches: tuple[int, ...] = (1, 10, 50, 100, 500)
    consumer_counts: tuple[int, ...] = (1, 2, 4, 8)


SMOKE = Sizes(single=100, batch_messages=1000, drain_single=100, drain_batch=1000, loop=500,
              latency_seconds=0.3, repeats=1, enqueue_batches=(1, 100), drain_batches=(1, 50),
              consumer_counts=(1, 4))

ALIASES = {"drainN": "drain50x4"}
"""Old ``--only`` keys."""


def main_scenarios(s: Sizes, poll: float) -> list[Scenario]:
    """The rows of the performance issue's table."""
    def drain(key: str, messages: int, batch: int, consumers: int) -> Scenario:
        what = "dequeue 1 + ack 1" if batch == 1 else f"batches of {batch}"
        return Scenario(key, f"drain {messages:,}: {what}, {consumers} consumer"
                             f"{'s' if consumers > 1 else ''}", "drain",
                        {"messages": messages, "batch": batch, "consumers": consumers},
                        "per claim+ack")

    k = s.drain_consumers
    return [
        Scenario("single", "single enqueue, one client", "single_enqueue",
                 {"messages": s.single}, "per call"),
        Scenario("batch", f"batch enqueue, {s.batch} per call", "batch_enqueue",
                 {"messages": s.batch_messages, "batch": s.batch}, "per call"),
        drain("drain1", s.drain_single, 1, 1),
        drain(f"drain1x{k}", s.drain_single, 1, k),
        drain(f"drain{s.drain_batch_size}", s.drain_batch, s.drain_batch_size, 1),
        drain(f"drain{s.drain_batch_size}x{k}", s.drain_batch, s.drain_batch_size, k),
        Scenario("loop", f"worker loop, no-op handler, batch {s.loop_batch} "
                         f"({s.loop:,} msgs)", "worker_loop",
                 {"messages": s.loop, "batch": s.loop_batch}, "-"),
        Scenario("latency", f"enqueue → handler at {s.latency_rate:g} msg/s "
                            f"for {s.latency_seconds:g} s", "latency",
                 {"rate": s.latency_rate, "seconds": s.latency_seconds,
                  "batch": s.latency_batch, "poll_interval": poll},
                 "enqueue → handler", kind="latency"),
    ]


def sweep_scenarios(s: Sizes) -> list[Scenario]:
    """Points of the plot: throughput vs batch size and vs consumer count."""
    points = [
        Scenario(f"sweep-enqueue-b{b}", f"batch enqueue, {b} per call", "batch_enqueue",
                 {"messages": min(s.batch_messages, max(2000, b * 500)), "batch": b},
                 "per call")
        for b in s.enqueue_batches
    ]
    points += [
        Scenario(f"sweep-drain-b{b}", f"drain, batch {b}, {s.drain_consumers} consumers",
                 "drain", {"messages": min(s.drain_batch, max(2000, b * 400)), "batch": b,
                           "consumers": s.drain_consumers}, "per claim+ack")
        for b in s.drain_batches
    ]
    points += [
        Scenario(f"sweep-drain-c{k}", f"drain, batch {s.drain_batch_size}, {k} consumers",
                 "drain", {"messages": s.drain_batch, "batch": s.drain_batch_size,
                           "consumers": k}, "per claim+ack")
        for k in s.consumer_counts
    ]
    return points


class Load:
    """The 1-minute load average seen after each run (the machine may be shared)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> float:
        value = os.getloadavg()[0]
        self.samples.append(value)
        return value

    def __str__(self) -> str:
        if not self.samples:
            return "load average not sampled"
        return (f"1-min load average {min(self.samples):.1f}-{max(self.samples):.1f} "
                f"(median {sorted(self.samples)[len(self.samples) // 2]:.1f})")


async def measure(points: Sequence[Scenario], sides: Sequence[Contender],
                  templates: Templates, repeats: int, load: Load) -> Results:
    """Run every point for every contender ``repeats`` times, interleaved, fresh DB each."""
    results: Results = {p.key: {side.name: [] for side in sides} for p in points}
    for repeat in range(repeats):
        for index, point in enumerate(points):
            # Alternate who goes first, across repeats and between neighbouring points.
            order = list(sides) if (repeat + index) % 2 == 0 else list(reversed(sides))
            for side in order:
                async with templates.of(side).fresh() as dsn:
                    m = await side.run(point.scenario, point.kwargs, dsn,
                                       latency=point.kind == "latency")
                results[point.key][side.name].append(m)
                p50 = m.percentile(50)
                lat = f"  p50 {p50 * 1000:.2f} ms" if p50 is not None else ""
                print(f"  [{repeat + 1}/{repeats}] {point.title:<48} {side.name:<8} "
                      f"{m.rate:>10,.0f} msg/s{lat}  (load {load.sample():.1f})",
                      file=sys.stderr, flush=True)
    return results


def environment(description: str, peers: Sequence[Contender] = ()) -> str:
    """One paragraph naming the versions and the machine."""
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("pgqrs", "SQLAlchemy", "asyncpg", "greenlet"))
    peer_versions = "".join(f"; {p.label} (own virtualenv)" for p in peers)
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; Python {platform.python_version()}; "
            f"{versions}{peer_versions}; {os.cpu_count()} CPUs ({platform.machine()}); "
            f"{description}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one repeat, two points per sweep (CI; < 60 s); "
                             "no peers unless --peers is given too")
    parser.add_argument("--dsn", default=os.environ.get("PGQRS_DSN"),
                        help="server to use (a role with CREATEDB); default: PGQRS_DSN, "
                             "else a throw-away server")
    parser.add_argument("--repeats", type=int, help="runs per scenario and side (median)")
    parser.add_argument("--only", help="comma-separated scenario keys: single, batch, "
                                       "drain1, drain1x4, drain50, drain50x4, loop, latency")
    parser.add_argument("--peers", default="",
                        help=f"comma-separated peers to run next to pgqrs ({', '.join(PEERS)}),"
                             " each installed in its own virtualenv; implies --no-sweeps")
    parser.add_argument("--peer-venvs", type=Path, default=DEFAULT_VENVS,
                        help="where the peers' virtualenvs live (default: .bench-venvs/)")
    parser.add_argument("--no-minimal", action="store_true",
                        help="skip the minimal-design floor")
    parser.add_argument("--no-sweeps", action="store_true", help="skip the plot's sweeps")
    parser.add_argument("--poll-interval", type=float, default=0.001,
                        help="pgqrs consume() poll_interval in the latency scenario")
    parser.add_argument("--floor-notify", choices=("latency", "always"), default="latency",
                        help="install both floors' NOTIFY-on-insert trigger for the latency "
                             "scenario only (default) or in every run")
    parser.add_argument("--pg-tmpdir", default=default_tmpdir(),
                        help="where the throw-away server keeps its data (default: "
                             "PGQRS_PG_TMPDIR, else the system temp dir; /dev/shm = RAM)")
    parser.add_argument("--no-durability", action="store_true",
                        help="keep the test server's fsync/synchronous_commit off")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--svg", type=Path, help="write the sweep chart here")
    parser.add_argument("--bars-svg", type=Path,
                        help="write the side-by-side bar chart of every contender here")
    parser.add_argument("--plot-from", type=Path, metavar="JSON",
                        help="only reprint the side-by-side table and redraw --svg / "
                             "--bars-svg from a --json file")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every row meets the same-SQL goal")
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    if args.peers and args.no_minimal:
        parser.error("--peers are shown next to the minimal floor: drop --no-minimal")
    return args


def _dump(path: Path, env: str, sizes: Sizes, labels: dict[str, str],
          results: Results) -> None:
    path.write_text(json.dumps({
        "environment": env, "repeats": sizes.repeats, "sizes": sizes.__dict__,
        "labels": labels,
        "results": {key: {side: [{"messages": m.messages, "seconds": m.seconds,
                                  "cpu_seconds": m.cpu_seconds, "rate": m.rate,
                                  "p50": m.percentile(50), "p99": m.percentile(99)}
                                 for m in runs] for side, runs in by_side.items()}
                    for key, by_side in results.items()},
    }, indent=1))


async def _run(args: argparse.Namespace, sizes: Sizes, dsn: str, description: str) -> int:
    sides = contenders.local(args.floor_notify, args.poll_interval,
                             minimal=not args.no_minimal)
    points = main_scenarios(sizes, args.poll_interval)
    if args.only:
        keys = {ALIASES.get(k.strip(), k.strip()) for k in args.only.split(",")}
        points = [p for p in points if p.key in keys]
    peers = await contenders.start_peers(args.peers, args.peer_venvs)
    sides += peers
    templates = Templates(dsn)
    load = Load()
    try:
        for side in sides:
            await templates.add(side)
        env = environment(f"{description}; server_version {await server_version(dsn)}",
                          peers)
        print(f"pgqrs benchmarks: {env}", file=sys.stderr, flush=True)
        began = time.perf_counter()
        results = await measure(points, sides, templates, sizes.repeats, load)
        sweeps = sweep_scenarios(sizes) if sizes.sweeps else []
        if sweeps:
            same_sql = [s for s in sides if s.name in ("floor", "pgqrs")]
            results.update(await measure(sweeps, same_sql, templates, sizes.repeats, load))
    finally:
        await templates.drop()
        for side in peers:
            await side.close()
    elapsed = time.perf_counter() - began
    env = f"{env}; {load}"
    labels = {p.name: p.label for p in peers}
    print(f"\n{env}; median of {sizes.repeats}; took {elapsed:.0f} s\n")
    print(report.table(points, results))
    if not args.no_minimal:
        print("\npgqrs and its peers (msg/s; latency row: p50 / p99)\n")
        print(report.side_by_side(points, results, labels))
    if sweeps:
        print("\nSweeps (plot data)\n")
        print(report.table(sweeps, results))
    print("\nLatency wake-up: " + "; ".join(f"{s.name}: {s.wake_up}" for s in sides))
    if args.json:
        _dump(args.json, env, sizes, labels, results)
    if sweeps:
        chart = report.plot(results, sizes, env)  # rendered in --smoke too, so it cannot rot
        if args.svg:
            args.svg.write_text(chart)
    if not args.no_minimal:
        bars = report.bars(points, results, labels, sizes.repeats, env)  # likewise
        if args.bars_svg:
            args.bars_svg.write_text(bars)
    return 1 if args.check and not report.goals_met(points, results) else 0


class Recorded(Measurement):
    """A measurement read back from ``--json``: its p50 and p99, not every latency."""

    def __init__(self, m: dict[str, Any]) -> None:
        super().__init__(m["messages"], m["seconds"], m["cpu_seconds"])
        self._percentiles = {50: m["p50"], 99: m["p99"]}

    def percentile(self, q: float) -> float | None:
        return self._percentiles[int(q)]


def replot(source: Path, sweep_svg: Path | None, bars_svg: Path | None) -> int:
    """Reprint the side-by-side table and redraw the charts from a ``--json`` file."""
    data = json.loads(source.read_text())
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in data["sizes"].items()}
    sizes = Sizes(**fields)
    results: Results = {key: {side: [Recorded(m) for m in runs]
                              for side, runs in by_side.items()}
                        for key, by_side in data["results"].items()}
    labels: dict[str, str] = data.get("labels", {})
    points = [p for p in main_scenarios(sizes, 0.001) if p.key in results]
    print(f"{data['environment']}; median of {sizes.repeats}\n")
    if points and all("minimal" in results[p.key] for p in points):
        print(report.side_by_side(points, results, labels))
        if bars_svg is not None:
            bars_svg.write_text(report.bars(points, results, labels, sizes.repeats,
                                            data["environment"]))
    if sweep_svg is not None:
        sweep_svg.write_text(report.plot(results, sizes, data["environment"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``."""
    args = parse_args(argv)
    if args.plot_from:
        return replot(args.plot_from, args.svg, args.bars_svg)
    sizes = SMOKE if args.smoke else Sizes()
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats)
    if args.no_sweeps or args.only or args.peers:
        sizes = replace(sizes, sweeps=False)
    with server(args.dsn, durable=not args.no_durability, tmpdir=args.pg_tmpdir) as pg:
        return asyncio.run(_run(args, sizes, pg.dsn, pg.description))


if __name__ == "__main__":
    raise SystemExit(main())
