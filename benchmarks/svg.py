"""Dependency-free SVG charts: line charts (the sweeps) and grouped bar charts (peers)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

Point = tuple[float, float]

FLOOR_COLOR = "#1f77b4"
PGQRS_COLOR = "#e6550d"


@dataclass(frozen=True)
class Series:
    """One line: a legend label, colour, dash pattern ("" = solid) and (x, y) points."""

    label: str
    color: str
    dash: str
    points: Sequence[Point]


@dataclass(frozen=True)
class Panel:
    """One chart: title, axis labels, log-scale flags and its lines."""

    title: str
    x_label: str
    y_label: str
    series: Sequence[Series]
    x_log: bool = True
    y_log: bool = True
    legend_bottom_right: bool = False


def _si(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for exp in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0 ** exp
            if low <= value <= high:
                ticks.append(value)
    return ticks


def _linear_ticks(high: float) -> list[float]:
    raw = high / 5
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    return [i * step for i in range(int(high / step) + 1)]


def _panel(panel: Panel, left: float, top: float, width: float, height: float) -> list[str]:
    xs = [x for s in panel.series for x, _ in s.points]
    ys = [y for s in panel.series for _, y in s.points]
    if not xs:
        return []
    x_low, x_high = min(xs), max(xs)
    if panel.y_log:
        y_low, y_high = 10 ** math.floor(math.log10(min(ys))), max(ys) * 1.3
    else:
        y_low, y_high = 0.0, max(ys) * 1.15

    def fx(x: float) -> float:
        if x_high == x_low:
            return left + width / 2
        if panel.x_log:
            frac = (math.log(x) - math.log(x_low)) / (math.log(x_high) - math.log(x_low))
        else:
            frac = (x - x_low) / (x_high - x_low)
        return left + frac * width

    def fy(y: float) -> float:
        if panel.y_log:
            frac = (math.log(y) - math.log(y_low)) / (math.log(y_high) - math.log(y_low))
        else:
            frac = (y - y_low) / (y_high - y_low)
        return top + height - frac * height

    out = [f'<text x="{left + width / 2:.1f}" y="{top - 14:.1f}" class="title">'
           f"{escape(panel.title)}</text>",
           f'<rect x="{left}" y="{top}" width="{width}" height="{height}" class="frame"/>']
    y_ticks = _log_ticks(y_low, y_high) if panel.y_log else _linear_ticks(y_high)
    for y in y_ticks:
        py = fy(y)
        out.append(f'<line x1="{left}" x2="{left + width}" y1="{py:.1f}" y2="{py:.1f}" '
                   'class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{py + 4:.1f}" class="ytick">{_si(y)}</text>')
    for x in sorted(set(xs)):
        px = fx(x)
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + height}" '
                   'class="grid"/>')
        out.append(f'<text x="{px:.1f}" y="{top + height + 16}" class="xtick">{_si(x)}</text>')
    out.append(f'<text x="{left + width / 2:.1f}" y="{top + height + 36}" class="label">'
               f"{escape(panel.x_label)}</text>")
    out.append(f'<text transform="translate({left - 52},{top + height / 2:.1f}) rotate(-90)" '
               f'class="label">{escape(panel.y_label)}</text>')
    for s in panel.series:
        coords = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in s.points)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(f'<polyline points="{coords}" fill="none" stroke="{s.color}" '
                   f'stroke-width="2"{dash}/>')
        out.extend(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" fill="{s.color}"/>'
                   for x, y in s.points)
    lx = left + width - 190 if panel.legend_bottom_right else left + 10
    ly0 = top + height - 10 - 16 * len(panel.series) if panel.legend_bottom_right else top
    out.append(f'<rect x="{lx - 4}" y="{ly0 + 2}" width="186" height="{16 * len(panel.series)}" '
               'fill="white" fill-opacity="0.85"/>')
    for i, s in enumerate(panel.series):
        ly = ly0 + 14 + i * 16
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(f'<line x1="{lx}" x2="{lx + 24}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{s.color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 30}" y="{ly}" class="legend">{escape(s.label)}</text>')
    return out


def render(panels: Sequence[Panel], *, title: str, note: str = "") -> str:
    """An SVG document with ``panels`` side by side."""
    width, height, pad = 480, 300, 80
    total_w = len(panels) * (width + pad) + pad / 2
    lines = textwrap.wrap(note, width=int(total_w / 6.2))
    total_h = height + 115 + 15 * len(lines)
    body: list[str] = []
    for i, panel in enumerate(panels):
        body += _panel(panel, pad + i * (width + pad), 60, width, height)
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0f}" height="{total_h}" '
        f'viewBox="0 0 {total_w:.0f} {total_h}" font-family="sans-serif">',
        "<style>.title{font-size:14px;font-weight:bold;text-anchor:middle}"
        ".label{font-size:12px;text-anchor:middle}.xtick{font-size:11px;text-anchor:middle}"
        ".ytick{font-size:11px;text-anchor:end}.legend{font-size:11px}"
        ".frame{fill:none;stroke:#444}.grid{stroke:#ddd}"
        ".note{font-size:11px;fill:#555}</style>",
        f'<rect width="{total_w:.0f}" height="{total_h}" fill="white"/>',
        f'<text x="{total_w / 2:.0f}" y="22" class="title">{escape(title)}</text>',
        *body,
        *(f'<text x="{pad / 2}" y="{height + 125 + 15 * i}" class="note">{escape(line)}</text>'
          for i, line in enumerate(lines)),
        "</svg>",
        "",
    ])


@dataclass(frozen=True)
class BarSeries:
    """One bar of every group: a legend label and a colour."""

    label: str
    color: str


@dataclass(frozen=True)
class BarPanel:
    """Horizontal grouped bars: one group per category, one bar per series.

    ``values[i][j]`` is category ``i``'s value for series ``j`` (NaN: no bar).
    """

    title: str
    categories: Sequence[str]
    series: Sequence[BarSeries]
    values: Sequence[Sequence[float]]
    log: bool = True
    unit: str = ""


_BAR = 11  # px per bar
_GROUP_GAP = 14
_LABEL_W = 330
_PLOT_W = 520


def _bar_panel(panel: BarPanel, top: float) -> tuple[list[str], float]:
    """SVG elements of ``panel`` starting at ``top``, and the height used."""
    present = [v for row in panel.values for v in row if v == v and v > 0]
    if not present:
        return [], 0.0
    left, width = _LABEL_W, _PLOT_W
    if panel.log:
        low = 10 ** math.floor(math.log10(min(present)))
        high = 10 ** math.ceil(math.log10(max(present) * 1.05))
    else:
        low, high = 0.0, max(present) * 1.15

    def fx(v: float) -> float:
        if panel.log:
            return left + (math.log(v) - math.log(low)) / (math.log(high) - math.log(low)) * width
        return left + (v - low) / (high - low) * width

    group_h = _BAR * len(panel.series) + _GROUP_GAP
    height = group_h * len(panel.categories)
    y0 = top + 24
    out = [f'<text x="{left + width / 2:.1f}" y="{top + 12:.1f}" class="title">'
           f"{escape(panel.title)}</text>",
           f'<rect x="{left}" y="{y0}" width="{width}" height="{height}" class="frame"/>']
    ticks = _log_ticks(low, high) if panel.log else _linear_ticks(high)
    for t in ticks:
        if not low <= t <= high:
            continue
        px = fx(t) if (t > 0 or not panel.log) else left
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y0}" y2="{y0 + height}" '
                   'class="grid"/>')
        out.append(f'<text x="{px:.1f}" y="{y0 + height + 14}" class="xtick">{_si(t)}</text>')
    for i, (category, row) in enumerate(zip(panel.categories, panel.values, strict=True)):
        gy = y0 + i * group_h + _GROUP_GAP / 2
        out.append(f'<text x="{left - 8}" y="{gy + group_h / 2 - 4:.1f}" class="ytick">'
                   f"{escape(category)}</text>")
        for j, (s, v) in enumerate(zip(panel.series, row, strict=True)):
            if v != v or v <= 0:
                continue
            by = gy + j * _BAR
            out.append(f'<rect x="{left}" y="{by:.1f}" width="{max(fx(v) - left, 1):.1f}" '
                       f'height="{_BAR - 2}" fill="{s.color}"/>')
            shown = f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
            out.append(f'<text x="{fx(v) + 3:.1f}" y="{by + _BAR - 3:.1f}" class="value">'
                       f"{shown}{escape(panel.unit)}</text>")
    return out, height + 24 + 24


def render_bars(panels: Sequence[BarPanel], *, title: str, note: str = "") -> str:
    """An SVG document with ``panels`` stacked vertically and one legend."""
    total_w = _LABEL_W + _PLOT_W + 90
    series = panels[0].series if panels else []
    body: list[str] = []
    top = 40.0
    legend_y = top
    for k, s in enumerate(series):
        lx = _LABEL_W + (k % 3) * 180
        ly = legend_y + (k // 3) * 16
        body.append(f'<rect x="{lx}" y="{ly}" width="14" height="10" fill="{s.color}"/>')
        body.append(f'<text x="{lx + 20}" y="{ly + 9}" class="legend">{escape(s.label)}</text>')
    top += 16 * ((len(series) + 2) // 3) + 14
    for panel in panels:
        elements, used = _bar_panel(panel, top)
        body += elements
        top += used + 10
    lines = textwrap.wrap(note, width=int(total_w / 6.2))
    total_h = top + 15 * len(lines) + 10
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0f}" height="{total_h:.0f}" '
        f'viewBox="0 0 {total_w:.0f} {total_h:.0f}" font-family="sans-serif">',
        "<style>.title{font-size:14px;font-weight:bold;text-anchor:middle}"
        ".xtick{font-size:11px;text-anchor:middle}.ytick{font-size:11px;text-anchor:end}"
        ".legend{font-size:11px}.value{font-size:9px;fill:#333}"
        ".frame{fill:none;stroke:#444}.grid{stroke:#ddd}"
        ".note{font-size:11px;fill:#555}</style>",
        f'<rect width="{total_w:.0f}" height="{total_h:.0f}" fill="white"/>',
        f'<text x="{total_w / 2:.0f}" y="22" class="title">{escape(title)}</text>',
        *body,
        *(f'<text x="20" y="{top + 12 + 15 * i:.0f}" class="note">{escape(line)}</text>'
          for i, line in enumerate(lines)),
        "</svg>",
        "",
    ])
