"""Fixtures of the observability tests."""

from __future__ import annotations

from .otel import traced

__all__ = ["traced"]
