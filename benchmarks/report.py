"""Tables and charts from the measurements of ``benchmarks.run``.

``Results`` maps a scenario key to each contender's measurements (one per repeat, in
repeat order), contenders named ``floor`` (same-SQL floor), ``pgqrs``, ``minimal``
(minimal-design floor) and the peers' names.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from benchmarks import svg
from benchmarks.scenarios import Measurement

if TYPE_CHECKING:
    from benchmarks.run import Sizes

THROUGHPUT_GOAL = 0.75
LATENCY_GOAL = 2.0

Results = dict[str, dict[str, list[Measurement]]]


@dataclass(frozen=True)
class Scenario:
    """A named, fully parameterised scenario: ``benchmarks.scenarios.<scenario>(side,
    dsn, **kwargs)``; ``latency_of`` says what its p50/p99 time."""

    key: str
    title: str
    scenario: str
    kwargs: Mapping[str, object]
    latency_of: str
    kind: Literal["throughput", "latency"] = "throughput"


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


def paired_ratio(p: Scenario, results: Results, a: str = "pgqrs", b: str = "floor") -> float:
    """Median over the repeats of ``a`` / ``b`` from the same repeat (run back to back or
    nearly, so a burst of load from elsewhere hits both): msg/s, or p50 for latency."""
    pairs = zip(results[p.key][a], results[p.key][b], strict=True)
    if p.kind == "latency":
        ratios = [(x.percentile(50) or math.nan) / (y.percentile(50) or math.nan)
                  for x, y in pairs]
    else:
        ratios = [x.rate / y.rate for x, y in pairs]
    return statistics.median(ratios)


def table(points: Sequence[Scenario], results: Results) -> str:
    """pgqrs against the same-SQL floor: medians, ratios, latencies and client CPU."""
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


def goals_met(points: Sequence[Scenario], results: Results) -> bool:
    """Whether every row meets the same-SQL goal (pgqrs / floor)."""
    ok = True
    for p in points:
        ratio = paired_ratio(p, results)
        ok &= ratio <= LATENCY_GOAL if p.kind == "latency" else ratio >= THROUGHPUT_GOAL
    return ok


def side_by_side(points: Sequence[Scenario], results: Results,
                 labels: Mapping[str, str]) -> str:
    """Every contender's msg/s (latency row: p50 / p99 ms), pgqrs's ratios to both floors,
    the schema's share (same-SQL / minimal) and, in each peer's cell, pgqrs / that peer.

    ``labels`` names the peer columns (``{"pgqueuer": "PgQueuer 1.6.0"}``). All ratios are
    medians of per-repeat ratios; for the latency row they are ratios of p50s (lower is
    better, so pgqrs leads a peer at a ratio below 1).
    """
    peers = list(labels)
    head = ("| scenario | minimal floor | same-SQL floor | pgqrs | pgqrs / minimal "
            "| pgqrs / same-SQL | same-SQL / minimal |"
            + "".join(f" {labels[n]} (pgqrs / it) |" for n in peers))
    if peers:
        head += " pgqrs ahead of every peer |"
    lines = [head, "|---|" + "--:|" * (6 + len(peers)) + (":-:|" if peers else "")]
    for p in points:
        s = {n: Summary.of(results[p.key][n]) for n in ("minimal", "floor", "pgqrs", *peers)}
        ratios = [paired_ratio(p, results, a, b)
                  for a, b in (("pgqrs", "minimal"), ("pgqrs", "floor"), ("floor", "minimal"))]
        to_peer = {n: paired_ratio(p, results, "pgqrs", n) for n in peers}
        latency = p.kind == "latency"
        shown = {n: f"{_ms(x.p50)} / {_ms(x.p99)} ms" if latency else f"{x.rate:,.0f}"
                 for n, x in s.items()}
        ratio_cells = [f"p50 x{r:.2f}" if latency else f"{r:.2f}" for r in ratios]
        ahead = all(r <= 1 if latency else r >= 1 for r in to_peer.values())
        cells = [shown[n] for n in ("minimal", "floor", "pgqrs")] + ratio_cells
        cells += [f"{shown[n]} ({to_peer[n]:.2f})" for n in peers]
        row = f"| {p.title} | " + " | ".join(cells) + " |"
        if peers:
            row += f" {'yes' if ahead else 'no'} |"
        lines.append(row)
    return "\n".join(lines)


def plot(results: Results, sizes: Sizes, note: str) -> str:
    """The sweep chart (throughput vs batch size, vs consumer count) as an SVG document."""
    def series(prefix: str, xs: Sequence[int], side: str) -> list[svg.Point]:
        return [(x, Summary.of(results[f"{prefix}{x}"][side]).rate) for x in xs]

    color = {"floor": svg.FLOOR_COLOR, "pgqrs": svg.PGQRS_COLOR}
    by_batch = svg.Panel(
        "Throughput vs batch size", "messages per call (log)", "msg/s (log)",
        [svg.Series(f"{what} - {side}", color[side], dash,
                    series(prefix, xs, side))
         for what, prefix, xs, dash in (
             ("enqueue_batch", "sweep-enqueue-b", sizes.enqueue_batches, ""),
             (f"drain, {sizes.drain_consumers} consumers", "sweep-drain-b",
              sizes.drain_batches, "6,4"))
         for side in ("floor", "pgqrs")], legend_bottom_right=True)
    by_consumers = svg.Panel(
        f"Drain throughput vs consumers (batch {sizes.drain_batch_size})",
        "consumers (asyncio tasks, own connection each)", "msg/s",
        [svg.Series(side, color[side], "",
                    series("sweep-drain-c", sizes.consumer_counts, side))
         for side in ("floor", "pgqrs")], y_log=False)
    return svg.render([by_batch, by_consumers],
                      title=f"pgqrs vs raw-asyncpg floor (median of {sizes.repeats})",
                      note=note)


COLORS = {"minimal": "#2ca02c", "floor": svg.FLOOR_COLOR, "pgqrs": svg.PGQRS_COLOR,
          "pgqueuer": "#9467bd", "pgmq": "#8c564b"}
_OTHER_COLORS = ("#17becf", "#bcbd22", "#7f7f7f")


def bars(points: Sequence[Scenario], results: Results, labels: Mapping[str, str],
         repeats: int, note: str) -> str:
    """Every contender side by side: msg/s of the throughput rows (log scale), and
    enqueue → handler p50 of the latency row, as an SVG document."""
    names = [n for n in ("minimal", "floor", "pgqrs", *labels)
             if all(n in results[p.key] for p in points)]
    shown = {"minimal": "minimal-design floor", "floor": "same-SQL floor", "pgqrs": "pgqrs",
             **labels}
    extra = iter(_OTHER_COLORS)
    series = [svg.BarSeries(shown[n], COLORS.get(n) or next(extra)) for n in names]
    throughput = [p for p in points if p.kind == "throughput"]
    latency = [p for p in points if p.kind == "latency"]
    panels = [svg.BarPanel(
        "Throughput (msg/s, log scale; longer is better)", [p.title for p in throughput],
        series, [[Summary.of(results[p.key][n]).rate for n in names] for p in throughput],
        log=True, unit="")]
    if latency:
        panels.append(svg.BarPanel(
            "Enqueue → handler latency, p50 (ms; shorter is better)",
            [p.title for p in latency], series,
            [[(Summary.of(results[p.key][n]).p50 or math.nan) * 1000 for n in names]
             for p in latency], log=False, unit=" ms"))
    return svg.render_bars(panels, title=f"pgqrs and its peers (median of {repeats})",
                           note=note)
