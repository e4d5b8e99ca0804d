"""``pgqrs.Config``: the original Python binding's configuration object, on pgqrs's options.

Code written for the original binding builds a ``Config`` and hands it to ``Admin``;
``Producer(admin, ...)`` and ``Consumer(admin, ...)`` then share that Admin's engine and
options. ``Config`` is only a way to spell pgqrs's own options; each field maps onto one:

============================== =================================================================
``Config`` field               pgqrs option
============================== =================================================================
``schema``                     ``Settings.schema``
``max_connections``            ``Settings.pool_size``
``connection_timeout_seconds`` ``Settings.connect_timeout``
``heartbeat_interval_seconds`` ``Settings.heartbeat_interval``
``max_read_ct``                ``Admin(max_read_ct=...)``: threshold of the queues it creates
``default_lock_time_seconds``  ``Admin(visibility_timeout=...)``: lease of the queues it creates
``default_max_batch_size``     checked only: the original reads it nowhere either
============================== =================================================================

Fields are plain attributes; they are validated when an ``Admin`` is built from the
``Config`` (typed ``ConfigurationError`` naming the field), as the original applied them
only then too. The two queue rules are defaults of the queues that Admin creates, since a
queue owns its rules (SPEC §12): clients, including those created from the Admin, follow
the policy stored on each queue. Defaults are pgqrs's, not the original's (see
``docs/guides/coming-from-pgqrs.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from pgqrs import errors
from pgqrs.settings import Settings

_SETTINGS_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings)}


@dataclass(slots=True)
class Config:
    """Connection and client options in the original binding's shape.

    Example:
        config = pgqrs.Config.from_dsn("postgresql://localhost/mydb")
        config.schema = "jobs"
        config.heartbeat_interval_seconds = 2
        admin = pgqrs.Admin(config)
        producer = pgqrs.Producer(admin, "tasks", "web-1", 8000)

    Attributes:
        dsn: the PostgreSQL URL (checked when the Admin is built).
        schema: schema of the pgqrs tables.
        max_connections: pool size of engines pgqrs creates (``Settings.pool_size``).
        connection_timeout_seconds: seconds to wait for a new connection.
        default_lock_time_seconds: lease (visibility timeout) of the queues the Admin
            creates (``Admin(visibility_timeout=...)``); consumers follow their queue's.
        default_max_batch_size: accepted and checked, without effect (as in the original).
        max_read_ct: dead-letter threshold of the queues the Admin creates
            (``Admin(max_read_ct=...)``); consumers follow their queue's.
        heartbeat_interval_seconds: seconds between automatic worker heartbeats.
    """

    dsn: str
    schema: str = _SETTINGS_DEFAULTS["schema"]
    max_connections: int = _SETTINGS_DEFAULTS["pool_size"]
    connection_timeout_seconds: float = _SETTINGS_DEFAULTS["connect_timeout"]
    default_lock_time_seconds: float = _SETTINGS_DEFAULTS["visibility_timeout"]
    default_max_batch_size: int = 100
    max_read_ct: int = 5
    heartbeat_interval_seconds: float = _SETTINGS_DEFAULTS["heartbeat_interval"]

    def __post_init__(self) -> None:
        if not isinstance(self.dsn, str) or not self.dsn:
            raise errors.ConfigurationError(
                f"Config needs a DSN string (postgresql://...), got {type(self.dsn).__name__}"
            )

    @classmethod
    def from_dsn(cls, dsn: str) -> Config:
        """A Config for ``dsn`` with every other field at its default.

        Like the original's, it ignores ``PGQRS_*`` environment variables: what you see
        on the object is what the Admin gets.

        Raises:
            ConfigurationError: ``dsn`` is not a non-empty string.
        """
        return cls(dsn)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                          if f.name != "dsn")
        return f"Config(dsn={errors.redact(self.dsn)!r}, {shown})"

    def admin_options(self) -> tuple[dict[str, Any], int]:
        """Validate every field; return (``Settings`` options, max_read_ct).

        Raises:
            ConfigurationError: a field has a bad value (the message names the field).
        """
        settings = {
            "schema": self.schema,
            "pool_size": self._count("max_connections"),
            "connect_timeout": self._seconds("connection_timeout_seconds"),
            "heartbeat_interval": self._seconds("heartbeat_interval_seconds"),
            "visibility_timeout": self._seconds("default_lock_time_seconds"),
        }
        self._count("default_max_batch_size")
        return settings, self._count("max_read_ct")

    def _count(self, name: str) -> int:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise errors.ConfigurationError(
                f"Config.{name} must be a positive integer, got {value!r:.40}")
        return value

    def _seconds(self, name: str) -> float:
        value = getattr(self, name)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value <= 0):
            raise errors.ConfigurationError(
                f"Config.{name} must be a positive, finite number of seconds, got {value!r:.40}")
        return float(value)
