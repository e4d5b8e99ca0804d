"""MkDocs hook: tidy reStructuredText-isms in pgqrs docstrings rendered by mkdocstrings.

A few docstrings introduce their examples with a reST literal-block marker (``Example::``,
or a bare ``::``). Markdown has no such marker, so mkdocstrings renders it as text. The code
block that follows renders correctly; this only drops the stray colon (or the bare ``::``).
"""

from __future__ import annotations

import re
from typing import Any

_MARKER = re.compile(r"<p>([^<]*?):?::</p>")


def _tidy(match: re.Match[str]) -> str:
    text = match.group(1).strip()
    return f"<p>{text}:</p>" if text else ""


def on_page_content(html: str, **_: Any) -> str:
    """Replace ``<p>Example::</p>`` with ``<p>Example:</p>`` and drop ``<p>::</p>``."""
    return _MARKER.sub(_tidy, html)
