"""A dependency-free SVG line chart: throughput vs batch size and vs consumer count."""

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
