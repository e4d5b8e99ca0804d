"""Validated, immutable options shared by Producer, Consumer and Admin.

Every option can be given as a keyword argument or through a ``PGQRS_<NAME>`` environment
variable (keyword arguments win).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any

from pgqrs import errors

MAX_PAYLOAD_DEPTH = 500
"""Upper bound for ``max_payload_depth``."""
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def validate_schema(schema: str) -> str:
    """Return ``schema`` if it is a plain PostgreSQL identifier, else raise.

    Raises:
        ConfigurationError: the name is not 1-63 letters, digits or underscores.
    """
    if not isinstance(schema, str) or not _IDENTIFIER.match(schema):
        raise errors.ConfigurationError(
            f"Invalid schema name {schema!r}: use 1-63 letters, digits or underscores, "
            "not starting with a digit"
        )
    return schema


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Options of a pgqrs client; all are keyword-only and validated when built."""

    schema: str = "public"
    """PostgreSQL schema holding the pgqrs tables."""
    pool_size: int = 5
    """Connections kept by an engine that pgqrs creates from a DSN."""
    max_overflow: int = 5
    """Extra connections such an engine may open under load."""
    connect_timeout: float = 10.0
    """Seconds to wait for a new connection."""
    statement_timeout: float = 30.0
    """Seconds a single statement may run before it is cancelled (client side)."""
    pgbouncer: bool = False
    """Transaction-pooling mode: no prepared-statement reuse, no LISTEN."""
    heartbeat_interval: float = 5.0
    """Seconds between automatic worker heartbeats."""
    stale_after: float | None = None
    """Seconds after which a silent worker counts as dead; default 3 heartbeat intervals."""
    max_payload_bytes: int = 1024 * 1024
    """Largest accepted payload, as UTF-8 JSON."""
    max_payload_depth: int = 32
    """Deepest accepted nesting of dicts and lists in a payload."""
    rate_limit: float | None = None
    """Optional client-side enqueue rate (messages per second)."""
    rate_burst: int = 100
    """Token-bucket burst size for ``rate_limit``."""

    def __post_init__(self) -> None:
        validate_schema(self.schema)
        for name in ("connect_timeout", "statement_timeout", "heartbeat_interval"):
            _positive(name, getattr(self, name))
        for name in ("pool_size", "max_payload_bytes", "rate_burst"):
            _positive(name, getattr(self, name), integer=True)
        # Far beyond any sane document, and well inside Python's and PostgreSQL's stack limits.
        _positive("max_payload_depth", self.max_payload_depth, integer=True,
                  upper=MAX_PAYLOAD_DEPTH)
        if not isinstance(self.max_overflow, int) or self.max_overflow < 0:
            raise errors.ConfigurationError("max_overflow must be an integer >= 0")
        if self.stale_after is not None:
            _positive("stale_after", self.stale_after)
        if self.rate_limit is not None:
            _positive("rate_limit", self.rate_limit)

    @property
    def stale_threshold(self) -> float:
        """Seconds of silence after which a worker is considered dead."""
        return self.stale_after if self.stale_after is not None else 3 * self.heartbeat_interval

    @classmethod
    def build(cls, **options: Any) -> Settings:
        """Build settings from keyword options, falling back to ``PGQRS_*`` variables.

        Raises:
            ConfigurationError: an option is unknown or has a bad value.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = set(options) - set(known)
        if unknown:
            raise errors.ConfigurationError(
                f"Unknown option(s) {sorted(unknown)}; known options: {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for name, f in known.items():
            value = options.get(name)
            if value is None:
                raw = os.environ.get(f"PGQRS_{name.upper()}")
                if raw is not None and raw != "":
                    value = _parse_env(name, raw, f)
            if value is not None:
                values[name] = value
        return cls(**values)


def _positive(name: str, value: object, *, integer: bool = False,
              upper: float = math.inf) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    ok = (not isinstance(value, bool) and isinstance(value, kinds)
          and math.isfinite(value) and 0 < value <= upper)  # type: ignore[arg-type,operator]
    if not ok:
        kind = "a positive integer" if integer else "a positive, finite number"
        limit = f" (at most {upper:g})" if upper != math.inf else ""
        raise errors.ConfigurationError(f"{name} must be {kind}{limit}, got {value!r}")


def _parse_env(name: str, raw: str, f: dataclasses.Field[Any]) -> Any:
    default = f.default
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float) or name in {"stale_after", "rate_limit"}:
            return float(raw)
    except ValueError as exc:
        raise errors.ConfigurationError(
            f"Environment variable PGQRS_{name.upper()}={raw!r} is not a number"
        ) from exc
    return raw
