"""Validated, immutable options shared by Producer, Consumer and Admin.

Every option can be given as a keyword argument or through a ``PGQRS_<NAME>`` environment
variable (keyword arguments win).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, Final

from pgqrs import errors
from pgqrs.types import QueuePolicy

MAX_PAYLOAD_DEPTH = 500
"""Upper bound for ``max_payload_depth``."""
MAX_READ_CT_LIMIT = 2**31 - 1
"""Largest ``max_read_ct`` (the column is a PostgreSQL ``integer``)."""
MAX_POLICY_SECONDS = 100 * 365 * 86400.0
"""Longest duration a queue policy accepts (100 years; beyond is a typo, not a policy)."""
POLICY_FIELDS = ("max_read_ct", "visibility_timeout", "retry_backoff_base",
                 "retry_backoff_max", "retention", "paused")
"""The fields of a queue's policy, in ``QueueInfo`` order."""
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class Default(enum.Enum):
    """The type of ``DEFAULT``."""

    TOKEN = enum.auto()


DEFAULT: Final = Default.TOKEN
"""An argument left to the settings, where None already means something (``retention``)."""


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
    generic_plans: bool = True
    """Plan the hot statements once per connection (``plan_cache_mode =
    force_generic_plan``) on the connections a Producer or Consumer opens itself; never on
    a host's engine, and not with ``pgbouncer``. False keeps PostgreSQL's default."""
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
    # Defaults for the policy of queues that Admin creates (SPEC §12); the queue row, not
    # these values, is what every client then follows.
    max_read_ct: int = 5
    """Default dead-letter threshold (deliveries) of new queues."""
    visibility_timeout: float = 30.0
    """Default lease of new queues, in seconds."""
    retry_backoff_base: float = 1.0
    """Default first retry delay of new queues, in seconds."""
    retry_backoff_max: float = 300.0
    """Default longest retry delay of new queues, in seconds."""
    retention: float | None = None
    """Default archive retention of new queues, in seconds; None keeps rows forever."""

    def __post_init__(self) -> None:
        validate_schema(self.schema)
        for name in ("connect_timeout", "statement_timeout", "heartbeat_interval"):
            _positive(name, getattr(self, name))
        for name in ("pool_size", "max_payload_bytes", "rate_burst"):
            _positive(name, getattr(self, name), integer=True)
        # Far beyond any sane document, and well inside Python's and PostgreSQL's stack limits.
        _positive("max_payload_depth", self.max_payload_depth, integer=True,
                  upper=MAX_PAYLOAD_DEPTH)
        if not isinstance(self.generic_plans, bool):
            raise errors.ConfigurationError(
                f"generic_plans must be True or False, got {self.generic_plans!r}")
        if not isinstance(self.max_overflow, int) or self.max_overflow < 0:
            raise errors.ConfigurationError("max_overflow must be an integer >= 0")
        if self.stale_after is not None:
            _positive("stale_after", self.stale_after)
        if self.rate_limit is not None:
            _positive("rate_limit", self.rate_limit)
        policy = {name: getattr(self, name) for name in POLICY_FIELDS if name != "paused"}
        for name, value in validate_policy(policy, error=errors.ConfigurationError).items():
            object.__setattr__(self, name, value)  # normalised: ints stay ints, floats

    def queue_policy(self, **given: Any) -> QueuePolicy:
        """The policy of a new queue: the ``given`` values over these settings' defaults.

        A field left out, or given as ``DEFAULT``, takes the setting; so does None, except
        for ``retention``, where None means "keep forever".

        Raises:
            ValidationError: a given value is bad, or the mix of given and default values
                is (``retry_backoff_max`` below ``retry_backoff_base``).
        """
        defaults = QueuePolicy(
            max_read_ct=self.max_read_ct, visibility_timeout=self.visibility_timeout,
            retry_backoff_base=self.retry_backoff_base,
            retry_backoff_max=self.retry_backoff_max, retention=self.retention,
        )
        values = {name: value for name, value in given.items()
                  if value is not DEFAULT and (value is not None or name == "retention")}
        policy = dataclasses.replace(defaults, **validate_policy(values))
        validate_policy(dataclasses.asdict(policy))
        return policy

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
        if isinstance(default, float) or name in {"stale_after", "rate_limit", "retention"}:
            return float(raw)
    except ValueError as exc:
        raise errors.ConfigurationError(
            f"Environment variable PGQRS_{name.upper()}={raw!r} is not a number"
        ) from exc
    return raw


def validate_policy(values: Mapping[str, object], *,
                    error: type[errors.PgqrsError] = errors.ValidationError) -> dict[str, Any]:
    """Check queue-policy values and return them normalised (durations as float seconds).

    Durations accept seconds (int or float) or a ``timedelta``. ``retention`` may be None
    (keep forever); no other field may.

    Raises:
        ValidationError (or ``error``): an unknown field, or a value of the wrong type or
            out of range, or ``retry_backoff_max`` below ``retry_backoff_base`` when both
            are given.
    """
    unknown = sorted(set(values) - set(POLICY_FIELDS))
    if unknown:
        raise error(f"Unknown queue policy field(s) {unknown}; known: {list(POLICY_FIELDS)}")
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name == "max_read_ct":
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not 1 <= value <= MAX_READ_CT_LIMIT:
                raise error(f"max_read_ct must be an int from 1 to {MAX_READ_CT_LIMIT}, "
                            f"got {value!r:.40}")
            out[name] = value
        elif name == "paused":
            if not isinstance(value, bool):
                raise error(f"paused must be a bool, got {value!r:.40}")
            out[name] = value
        elif name == "retention" and value is None:
            out[name] = None
        else:
            # A lease of 0 would hand a message to the next claim at once; a retention of 0
            # would purge what was just archived. Backoff may be 0 (retry at once).
            out[name] = _duration(name, value, allow_zero=name.startswith("retry_"),
                                  error=error)
    base, cap = out.get("retry_backoff_base"), out.get("retry_backoff_max")
    if base is not None and cap is not None and cap < base:
        raise error(f"retry_backoff_max ({cap:g} s) must not be below retry_backoff_base "
                    f"({base:g} s)")
    return out


def _duration(name: str, value: object, *, allow_zero: bool,
              error: type[errors.PgqrsError]) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
            or not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero) \
            or seconds > MAX_POLICY_SECONDS:
        bound = ">= 0" if allow_zero else "> 0"
        raise error(f"{name} must be a number of seconds (or a timedelta) {bound} and at most "
                    f"100 years, got {value!r:.40}")
    return float(seconds)
