"""DSN normalisation and password redaction.

pgqrs accepts ``postgresql://``, ``postgres://`` and ``postgresql+asyncpg://`` URLs with
libpq-style query parameters (``sslmode``, ``host=/socket/dir``, ...). The URL is handed to
asyncpg's own libpq-compatible parser, so what works with ``psql`` works here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

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


_HINT = ("percent-encode special characters of the user name and password, "
         "such as '@', '/', '?', '#', ':' and spaces")


def _invalid(problem: str) -> errors.ConfigurationError:
    # Never echo the DSN or a parser's message: either may contain the password.
    return errors.ConfigurationError(f"Invalid DSN: {problem}")


def parse(dsn: str) -> ParsedDsn:
    """Validate ``dsn`` and return it in the ``postgresql://`` form asyncpg parses.

    The user name and password are re-encoded, so asyncpg splits the URL exactly where
    pgqrs does (at the last ``@`` of the authority).

    Raises:
        ConfigurationError: not a string, not a PostgreSQL URL, or a malformed one; the
            message never contains the DSN itself.
    """
    if not isinstance(dsn, str) or not dsn.strip():
        raise errors.ConfigurationError(
            "A DSN must be a non-empty string such as 'postgresql://user@host/dbname'"
        )
    scheme, sep, _ = dsn.strip().partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        shown = repr(scheme[:30]) if sep else "none"
        raise errors.ConfigurationError(
            f"Unsupported DSN scheme {shown}: expected a URL starting with postgresql://, "
            "postgres:// or postgresql+asyncpg://"
        )
    try:
        parts = urlsplit(dsn.strip())
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
        username, password = parts.username, parts.password
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise _invalid(f"the host or port cannot be parsed ({_HINT})") from None
    if port == 0:
        raise _invalid("the port must be between 1 and 65535")
    connect_timeout: float | None = None
    kept: list[tuple[str, str]] = []
    for key, value in query:
        if key in _CLIENT_ONLY:
            try:
                connect_timeout = float(value)
            except ValueError:
                raise _invalid("connect_timeout must be a number of seconds") from None
            if not math.isfinite(connect_timeout) or connect_timeout <= 0:
                raise _invalid("connect_timeout must be a positive, finite number of seconds")
            continue
        if key == "port" and not all(_valid_port(p) for p in value.split(",")):
            raise _invalid("the port parameter must be a number between 1 and 65535")
        kept.append((key, value))
    netloc = parts.netloc.rpartition("@")[2]
    if username is not None:
        userinfo = quote(unquote(username), safe="")
        if password is not None:
            userinfo += ":" + quote(unquote(password), safe="")
        netloc = f"{userinfo}@{netloc}"
    url = urlunsplit(("postgresql", netloc, parts.path, urlencode(kept), parts.fragment))
    return ParsedDsn(libpq_url=url, connect_timeout=connect_timeout)


def _valid_port(text: str) -> bool:
    # isdecimal, not isdigit: '²' is a digit that int() refuses.
    text = text.strip()
    return text.isascii() and text.isdecimal() and 0 < int(text) < 65536
