"""DSN normalisation and password redaction.

pgqrs accepts ``postgresql://``, ``postgres://`` and ``postgresql+asyncpg://`` URLs with
libpq-style query parameters (``sslmode``, ``host=/socket/dir``, ...). The URL is handed to
asyncpg's own libpq-compatible parser, so what works with ``psql`` works here.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pgqrs import errors

_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg", "postgres+asyncpg"}
# libpq parameters asyncpg does not understand; asyncpg would send them to the server as
# run-time settings and the server would reject them.
_CLIENT_ONLY = {"connect_timeout"}


@dataclass(frozen=True, slots=True)
class ParsedDsn:
    """A DSN split into what asyncpg accepts and the client-only libpq options."""

    libpq_url: str
    connect_timeout: float | None

    def __repr__(self) -> str:
        return f"ParsedDsn({redact(self.libpq_url)!r})"


def redact(dsn: str) -> str:
    """Return ``dsn`` with its password (if any) replaced by ``***``."""
    return errors.redact(dsn)


def parse(dsn: str) -> ParsedDsn:
    """Validate ``dsn`` and return it in the ``postgresql://`` form asyncpg parses.

    Raises:
        ConfigurationError: not a string, or not a PostgreSQL URL.
    """
    if not isinstance(dsn, str) or not dsn.strip():
        raise errors.ConfigurationError(
            "A DSN must be a non-empty string such as 'postgresql://user@host/dbname'"
        )
    try:
        parts = urlsplit(dsn.strip())
        _ = parts.port  # raises ValueError for a non-numeric port
    except ValueError as exc:
        raise errors.ConfigurationError(f"Invalid DSN {redact(dsn)!r}: {exc}") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise errors.ConfigurationError(
            f"Unsupported DSN {redact(dsn)!r}: expected a URL starting with postgresql://, "
            "postgres:// or postgresql+asyncpg://"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    connect_timeout: float | None = None
    kept: list[tuple[str, str]] = []
    for key, value in query:
        if key in _CLIENT_ONLY:
            try:
                connect_timeout = float(value)
            except ValueError:
                raise errors.ConfigurationError(
                    f"Invalid DSN {redact(dsn)!r}: connect_timeout must be a number"
                ) from None
        else:
            kept.append((key, value))
    url = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(kept), parts.fragment))
    return ParsedDsn(libpq_url=url, connect_timeout=connect_timeout)
