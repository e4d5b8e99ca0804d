"""What the CLI prints: results as JSON or aligned tables, and progress on a terminal."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from datetime import datetime
from typing import Any, TextIO


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))[:60]
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render(value: object, fmt: str, out: TextIO | None = None) -> None:
    """Print ``value`` as JSON (one document) or as an aligned table for people.

    Args:
        value: a result: dataclasses, dicts, lists of either, or a scalar.
        fmt: ``"json"`` or ``"table"``.
        out: where to write (default: the current ``sys.stdout``).
    """
    out = sys.stdout if out is None else out
    data = _plain(value)
    if fmt == "json":
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
        return
    if isinstance(data, list):
        if not data:
            out.write("(none)\n")
            return
        if not isinstance(data[0], dict):
            out.write("\n".join(_cell(v) for v in data) + "\n")
            return
        columns = list(data[0])
        rows = [[_cell(r.get(c)) for c in columns] for r in data]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
                  + "\n")
        for row in rows:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                      + "\n")
        return
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key, item in data.items():
            out.write(f"{key.ljust(width)}  {_cell(item)}\n")
        return
    out.write(f"{_cell(data)}\n")


class Progress:
    """A counter redrawn in place on stderr, shown only on a terminal and without ``-q``.

    Example:
        progress = Progress("enqueued {} messages", quiet=args.quiet)
        progress.update(500)
        progress.finish(1200)
    """

    def __init__(self, template: str, *, quiet: bool) -> None:
        self._out = sys.stderr
        self._template = template
        self.shown = self._out.isatty() and not quiet
        """Whether anything is printed at all."""

    def update(self, count: int) -> None:
        """Redraw the line with ``count``."""
        if self.shown:
            self._out.write(f"\r{self._template.format(count)}")

    def finish(self, count: int) -> None:
        """Draw the final ``count`` and end the line."""
        if self.shown:
            self._out.write(f"\r{self._template.format(count)}\n")
