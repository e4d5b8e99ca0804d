"""Run every scenario for pgqrs and for the raw-asyncpg floor and print the comparison.

Usage (from the repository root)::

    python -m benchmarks [--smoke] [--dsn URL] [--repeats N] [--only KEYS]
                         [--json results.json] [--svg docs/benchmarks.svg] [--check]

Each (repeat, scenario) runs both sides back to back in alternating order, each in a
fresh database. The table shows the median over the repeats of every figure, and as
``pgqrs / floor`` the median of the per-repeat ratios (each from a back-to-back pair).
Without ``--dsn`` (or ``PGQRS_DSN``) a throw-away PostgreSQL is started the way the tests
start theirs, with PostgreSQL's default durability settings.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from benchmarks import scenarios, svg
from benchmarks.scenarios import Measurement
from benchmarks.server import Databases, default_tmpdir, server
from benchmarks.sides import FloorSide, PgqrsSide, Side

THROUGHPUT_GOAL = 0.75
LATENCY_GOAL = 2.0


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

Run = Callable[[Side, str], Awaitable[Measurement]]


@dataclass(frozen=True)
class Scenario:
    """A named, fully parameterised scenario; ``latency_of`` says what p50/p99 time."""

    key: str
    title: str
    run: Run
    latency_of: str
    kind: Literal["throughput", "latency"] = "throughput"


def main_scenarios(s: Sizes, poll: float) -> list[Scenario]:
    """The six rows of the issue's table."""
    f = functools.partial
    return [
        Scenario("single", "single enqueue, one client",
                 f(scenarios.single_enqueue, messages=s.single), "per call"),
        Scenario("batch", f"batch enqueue, {s.batch} per call",
                 f(scenarios.batch_enqueue, messages=s.batch_messages, batch=s.batch),
                 "per call"),
        Scenario("drain1", f"drain {s.drain_single:,}, dequeue 1 + ack 1, 1 consumer",
                 f(scenarios.drain, messages=s.drain_single, batch=1, consumers=1),
                 "per claim+ack"),
        Scenario("drainN", f"drain {s.drain_batch:,}, batch {s.drain_batch_size}, "
                           f"{s.drain_consumers} consumers",
                 f(scenarios.drain, messages=s.drain_batch, batch=s.drain_batch_size,
                   consumers=s.drain_consumers), "per claim+ack"),
        Scenario("loop", f"worker loop, no-op handler, batch {s.loop_batch} "
                         f"({s.loop:,} msgs)",
                 f(scenarios.worker_loop, messages=s.loop, batch=s.loop_batch), "-"),
        Scenario("latency", f"enqueue → handler at {s.latency_rate:g} msg/s "
                            f"for {s.latency_seconds:g} s",
                 f(scenarios.latency, rate=s.latency_rate, seconds=s.latency_seconds,
                   batch=s.latency_batch, poll_interval=poll),
                 "enqueue → handler", kind="latency"),
    ]


def sweep_scenarios(s: Sizes) -> list[Scenario]:
    """Points of the plot: throughput vs batch size and vs consumer count."""
    f = functools.partial
    points = [
        Scenario(f"sweep-enqueue-b{b}", f"batch enqueue, {b} per call",
                 f(scenarios.batch_enqueue, messages=min(s.batch_messages, max(2000, b * 500)),
                   batch=b), "per call")
        for b in s.enqueue_batches
    ]
    points += [
        Scenario(f"sweep-drain-b{b}", f"drain, batch {b}, {s.drain_consumers} consumers",
                 f(scenarios.drain, messages=min(s.drain_batch, max(2000, b * 400)), batch=b,
                   consumers=s.drain_consumers), "per claim+ack")
        for b in s.drain_batches
    ]
    points += [
        Scenario(f"sweep-drain-c{k}", f"drain, batch {s.drain_batch_size}, {k} consumers",
                 f(scenarios.drain, messages=s.drain_batch, batch=s.drain_batch_size,
                   consumers=k), "per claim+ack")
        for k in s.consumer_counts
    ]
    return points


Results = dict[str, dict[str, list[Measurement]]]


async def measure(points: Sequence[Scenario], sides: Sequence[Side], dbs: Databases,
                  repeats: int) -> Results:
    """Run every point for every side ``repeats`` times, interleaved, fresh DB each run."""
    results: Results = {p.key: {side.name: [] for side in sides} for p in points}
    for repeat in range(repeats):
        for index, point in enumerate(points):
            # Alternate who goes first, across repeats and between neighbouring points.
            order = list(sides) if (repeat + index) % 2 == 0 else list(reversed(sides))
            for side in order:
                async with dbs.fresh() as dsn:
                    await side.prepare(dsn, latency=point.kind == "latency")
                    m = await point.run(side, dsn)
                results[point.key][side.name].append(m)
                p50 = m.percentile(50)
                lat = f"  p50 {p50 * 1000:.2f} ms" if p50 is not None else ""
                print(f"  [{repeat + 1}/{repeats}] {point.title:<48} {side.name:<5} "
                      f"{m.rate:>10,.0f} msg/s{lat}  (load {os.getloadavg()[0]:.1f})",
                      file=sys.stderr, flush=True)
    return results


@dataclass(frozen=True)
class Summary:
    """Medians over the repeats of one scenario on one side."""

    rate: float
    p50: float | None
    p99: float | None
    cpu: float

    @classmethod
    def of(cls, runs: Sequence[Measurement]) -> Summary:
        def med(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return statistics.median(present) if present else None

        return cls(rate=statistics.median(m.rate for m in runs),
                   p50=med([m.percentile(50) for m in runs]),
                   p99=med([m.percentile(99) for m in runs]),
                   cpu=statistics.median(m.cpu_per_message for m in runs))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def table(points: Sequence[Scenario], results: Results) -> str:
    """A Markdown table of medians and pgqrs / floor ratios."""
    lines = [
        "| scenario | floor msg/s | pgqrs msg/s | pgqrs / floor | floor p50 / p99 ms "
        "| pgqrs p50 / p99 ms | latency of | floor CPU µs/msg | pgqrs CPU µs/msg | goal |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|:-:|",
    ]
    for p in points:
        floor, pgqrs = (Summary.of(results[p.key][n]) for n in ("floor", "pgqrs"))
        ratio = paired_ratio(p, results)
        if p.kind == "latency":
            shown = f"p50 x{ratio:.2f}"
            met = ratio <= LATENCY_GOAL
        else:
            shown = f"{ratio:.2f}"
            met = ratio >= THROUGHPUT_GOAL
        lines.append(
            f"| {p.title} | {floor.rate:,.0f} | {pgqrs.rate:,.0f} | {shown} "
            f"| {_ms(floor.p50)} / {_ms(floor.p99)} | {_ms(pgqrs.p50)} / {_ms(pgqrs.p99)} "
            f"| {p.latency_of} | {floor.cpu * 1e6:.0f} | {pgqrs.cpu * 1e6:.0f} "
            f"| {'yes' if met else 'no'} |"
        )
    return "\n".join(lines)


def paired_ratio(p: Scenario, results: Results) -> float:
    """Median over the repeats of pgqrs / floor from the same repeat (run back to back,
    so a burst of load from elsewhere hits both): msg/s, or p50 for the latency row."""
    pairs = zip(results[p.key]["pgqrs"], results[p.key]["floor"], strict=True)
    if p.kind == "latency":
        ratios = [(a.percentile(50) or math.nan) / (b.percentile(50) or math.nan)
                  for a, b in pairs]
    else:
        ratios = [a.rate / b.rate for a, b in pairs]
    return statistics.median(ratios)


def goals_met(points: Sequence[Scenario], results: Results) -> bool:
    """Whether every row meets the issue's goal."""
    ok = True
    for p in points:
        ratio = paired_ratio(p, results)
        ok &= ratio <= LATENCY_GOAL if p.kind == "latency" else ratio >= THROUGHPUT_GOAL
    return ok


def plot(results: Results, s: Sizes, note: str) -> str:
    """The sweep chart (throughput vs batch size, vs consumer count) as an SVG document."""
    def series(prefix: str, xs: Sequence[int], side: str) -> list[svg.Point]:
        return [(x, Summary.of(results[f"{prefix}{x}"][side]).rate) for x in xs]

    color = {"floor": svg.FLOOR_COLOR, "pgqrs": svg.PGQRS_COLOR}
    by_batch = svg.Panel(
        "Throughput vs batch size", "messages per call (log)", "msg/s (log)",
        [svg.Series(f"{what} - {side}", color[side], dash,
                    series(prefix, xs, side))
         for what, prefix, xs, dash in (
             ("enqueue_batch", "sweep-enqueue-b", s.enqueue_batches, ""),
             (f"drain, {s.drain_consumers} consumers", "sweep-drain-b", s.drain_batches,
              "6,4"))
         for side in ("floor", "pgqrs")], legend_bottom_right=True)
    by_consumers = svg.Panel(
        f"Drain throughput vs consumers (batch {s.drain_batch_size})",
        "consumers (asyncio tasks, own connection each)", "msg/s",
        [svg.Series(side, color[side], "", series("sweep-drain-c", s.consumer_counts, side))
         for side in ("floor", "pgqrs")], y_log=False)
    return svg.render([by_batch, by_consumers],
                      title=f"pgqrs vs raw-asyncpg floor (median of {s.repeats})", note=note)


def environment(description: str) -> str:
    """One paragraph naming the versions and the machine."""
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("pgqrs", "SQLAlchemy", "asyncpg", "greenlet"))
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; Python {platform.python_version()}; "
            f"{versions}; {os.cpu_count()} CPUs ({platform.machine()}); {description}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one repeat, two points per sweep (CI; < 60 s)")
    parser.add_argument("--dsn", default=os.environ.get("PGQRS_DSN"),
                        help="server to use (a role with CREATEDB); default: PGQRS_DSN, "
                             "else a throw-away server")
    parser.add_argument("--repeats", type=int, help="runs per scenario and side (median)")
    parser.add_argument("--only", help="comma-separated scenario keys: single, batch, "
                                       "drain1, drainN, loop, latency")
    parser.add_argument("--no-sweeps", action="store_true", help="skip the plot's sweeps")
    parser.add_argument("--poll-interval", type=float, default=0.001,
                        help="pgqrs consume() poll_interval in the latency scenario")
    parser.add_argument("--floor-notify", choices=("latency", "always"), default="latency",
                        help="install the floor's NOTIFY-on-insert trigger for the latency "
                             "scenario only (default) or in every run")
    parser.add_argument("--pg-tmpdir", default=default_tmpdir(),
                        help="where the throw-away server keeps its data (default: "
                             "PGQRS_PG_TMPDIR, else the system temp dir; /dev/shm = RAM)")
    parser.add_argument("--no-durability", action="store_true",
                        help="keep the test server's fsync/synchronous_commit off")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--svg", type=Path, help="write the sweep chart here")
    parser.add_argument("--plot-from", type=Path, metavar="JSON",
                        help="only redraw --svg from a --json file of an earlier full run")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every row meets the issue's goal")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace, sizes: Sizes, dsn: str, description: str) -> int:
    sides: list[Side] = [FloorSide(args.floor_notify), PgqrsSide(args.poll_interval)]
    points = main_scenarios(sizes, args.poll_interval)
    if args.only:
        keys = {k.strip() for k in args.only.split(",")}
        points = [p for p in points if p.key in keys]
    dbs = Databases(dsn)
    await dbs.create_template()
    env = environment(description)
    print(f"pgqrs benchmarks: {env}", file=sys.stderr, flush=True)
    began = time.perf_counter()
    try:
        results = await measure(points, sides, dbs, sizes.repeats)
        sweeps = sweep_scenarios(sizes) if sizes.sweeps else []
        if sweeps:
            results.update(await measure(sweeps, sides, dbs, sizes.repeats))
    finally:
        await dbs.drop_template()
    elapsed = time.perf_counter() - began
    print(f"\n{env}; median of {sizes.repeats}; took {elapsed:.0f} s\n")
    print(table(points, results))
    if sweeps:
        print("\nSweeps (plot data)\n")
        print(table(sweeps, results))
    print("\nLatency wake-up: " + "; ".join(f"{s.name}: {s.wake_up}" for s in sides))
    if args.json:
        args.json.write_text(json.dumps({
            "environment": env, "repeats": sizes.repeats, "sizes": sizes.__dict__,
            "results": {key: {side: [{"messages": m.messages, "seconds": m.seconds,
                                      "cpu_seconds": m.cpu_seconds, "rate": m.rate,
                                      "p50": m.percentile(50), "p99": m.percentile(99)}
                                     for m in runs] for side, runs in by_side.items()}
                        for key, by_side in results.items()},
        }, indent=1))
    if sweeps:
        chart = plot(results, sizes, env)  # rendered in --smoke too, so it cannot rot
        if args.svg:
            args.svg.write_text(chart)
    return 1 if args.check and not goals_met(points, results) else 0


def replot(source: Path, target: Path | None) -> int:
    """Redraw the chart from the measurements a ``--json`` file holds."""
    data = json.loads(source.read_text())
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in data["sizes"].items()}
    sizes = Sizes(**fields)
    results: Results = {
        key: {side: [Measurement(m["messages"], m["seconds"], m["cpu_seconds"]) for m in runs]
              for side, runs in by_side.items()}
        for key, by_side in data["results"].items()
    }
    chart = plot(results, sizes, data["environment"])
    if target is None:
        print(chart)
    else:
        target.write_text(chart)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``."""
    args = parse_args(argv)
    if args.plot_from:
        return replot(args.plot_from, args.svg)
    sizes = SMOKE if args.smoke else Sizes()
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats)
    if args.no_sweeps or args.only:
        sizes = replace(sizes, sweeps=False)
    with server(args.dsn, durable=not args.no_durability, tmpdir=args.pg_tmpdir) as pg:
        return asyncio.run(_run(args, sizes, pg.dsn, pg.description))


if __name__ == "__main__":
    raise SystemExit(main())
