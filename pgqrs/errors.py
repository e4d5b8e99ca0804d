"""Exceptions raised by pgqrs, and the one place database errors are translated.

```text
PgqrsError(RuntimeError)
├── ConfigurationError
├── ValidationError
├── SchemaError
│   ├── SchemaNotInstalledError
│   └── SchemaVersionMismatchError
├── QueueNotFoundError
├── QueueAlreadyExistsError
├── QueueInUseError
├── WorkerNotFoundError
├── WorkerAlreadyExistsError
├── StateError
└── DatabaseError
    └── DatabaseUnavailableError (also a builtin ConnectionError)
```

``PgqrsError`` subclasses ``RuntimeError`` so that code written against the original
pgqrs bindings (``except RuntimeError``) keeps working.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

_INSTALL_HINT = "run `pgqrs install` or `await Admin(...).install()`"


class PgqrsError(RuntimeError):
    """A pgqrs operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(PgqrsError):
    """An option, schema name or DSN is not usable."""


class ValidationError(PgqrsError):
    """An argument was rejected before any SQL ran; nothing was written."""


class SchemaError(PgqrsError):
    """The pgqrs schema is not in the state this version of pgqrs needs."""


class SchemaNotInstalledError(SchemaError):
    """The pgqrs schema is missing or incomplete; run `pgqrs install`."""


class SchemaVersionMismatchError(SchemaError):
    """The database's pgqrs schema revision differs from this version of pgqrs."""


class QueueNotFoundError(PgqrsError):
    """The queue does not exist."""

    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name
        super().__init__(
            f"Queue {queue_name!r} does not exist; create it first with "
            f"`await Admin(...).create_queue({queue_name!r})` or `pgqrs queue create {queue_name}`"
        )


class QueueAlreadyExistsError(PgqrsError):
    """The queue already exists."""

    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name
        super().__init__(f"Queue {queue_name!r} already exists")


class QueueInUseError(PgqrsError):
    """The queue still has messages or live workers."""

    def __init__(self, queue_name: str, *, messages: int, live_workers: int) -> None:
        self.queue_name = queue_name
        self.messages = messages
        self.live_workers = live_workers
        super().__init__(
            f"Queue {queue_name!r} is in use ({messages} message(s), {live_workers} live "
            "worker(s)); purge its messages and stop its workers before deleting it"
        )


class WorkerNotFoundError(PgqrsError):
    """The worker does not exist."""

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        super().__init__(f"Worker {worker_id} does not exist")


class WorkerAlreadyExistsError(PgqrsError):
    """A live worker already holds this (hostname, port) identity."""

    def __init__(self, hostname: str, port: int) -> None:
        self.hostname = hostname
        self.port = port
        super().__init__(
            f"A live worker is already registered as ({hostname!r}, {port}); use another "
            "hostname/port, or stop the other one (`pgqrs worker stop <id>`). If it crashed, "
            "its row is taken over once its heartbeat is stale (3 heartbeat intervals, "
            "15 s by default)"
        )


class StateError(PgqrsError):
    """An operation or transition is not allowed in the worker's current state.

    ``from_status`` is the worker's status; ``to_status`` the status asked for, or, for a
    refused operation (``StateError.refused``), the operation's name.
    """

    def __init__(self, from_status: str, to_status: str, why: str, *,
                 message: str | None = None) -> None:
        self.from_status = from_status
        self.to_status = to_status
        super().__init__(message or f"Cannot go from {from_status!r} to {to_status!r}: {why}")

    @classmethod
    def refused(cls, status: str, operation: str, why: str) -> StateError:
        """A refusal of ``operation`` (not a transition) while the worker is ``status``."""
        return cls(status, operation, why,
                   message=f"Cannot {operation} while the worker is {status!r}: {why}")


class DatabaseError(PgqrsError):
    """The database reported an error; the original exception is ``__cause__``."""


class DatabaseUnavailableError(DatabaseError, ConnectionError):
    """The database cannot be reached or the connection was lost; retry later."""


# SQLSTATE classes and codes that mean "the server is not there right now".
_UNAVAILABLE_PREFIXES = ("08", "57P01", "57P02", "57P03", "53300")
_MISSING_OBJECT = {"42P01", "3F000", "42704"}
# pgqrs's statements name only pgqrs's own columns: one the server does not know means a
# schema older than this pgqrs (clients do not check the revision on every call, so that
# an old client keeps working during a rolling upgrade; a new one on an old schema fails).
_UNDEFINED_COLUMN = "42703"
_INSUFFICIENT_PRIVILEGE = "42501"
# A safety net for driver messages; pgqrs's own messages never contain a DSN. Greedy up to
# the last "@" of the line, so a password with spaces or "@" in it is covered too.
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^\n]*@")
_PASSWORD_IN_KV = re.compile(r"(password\s*=\s*)('[^']*'|[^\n]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """Return ``text`` with any password in a DSN-looking fragment replaced by ``***``."""
    return _PASSWORD_IN_KV.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", text))


def _sqlstate(exc: BaseException) -> str | None:
    """Find the SQLSTATE of a SQLAlchemy or asyncpg exception, if it has one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def _constraint_name(exc: BaseException) -> str | None:
    """Find the violated constraint name, under SQLAlchemy's asyncpg adapter."""
    current: BaseException | None = exc
    for _ in range(4):
        if current is None:
            return None
        name = getattr(current, "constraint_name", None)
        if isinstance(name, str):
            return name
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def _is_driver_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("sqlalchemy", "asyncpg"))


def translate(exc: BaseException, **context: Any) -> PgqrsError:
    """Map a driver, SQLAlchemy or socket exception to the matching pgqrs error.

    Args:
        exc: the exception to translate.
        **context: ``queue_name``, ``hostname`` and ``port`` for the messages of unique
            violations.

    Returns:
        The pgqrs error to raise ``from exc``.
    """
    state = _sqlstate(exc)
    detail = _first_line(getattr(exc, "orig", None) or exc)
    if state == "23505":
        constraint = _constraint_name(exc) or ""
        if "queue_name" in constraint and "queue_name" in context:
            return QueueAlreadyExistsError(context["queue_name"])
        if "hostname" in constraint and "hostname" in context:
            return WorkerAlreadyExistsError(context["hostname"], context["port"])
    if state is not None and state.startswith(_UNAVAILABLE_PREFIXES):
        return DatabaseUnavailableError(f"Database unavailable: {detail}")
    if state in _MISSING_OBJECT:
        return SchemaNotInstalledError(
            f"The pgqrs schema is not installed here ({detail}); {_INSTALL_HINT}"
        )
    if state == _UNDEFINED_COLUMN:
        return SchemaVersionMismatchError(
            f"The pgqrs schema here is older than this version of pgqrs needs ({detail}); "
            f"upgrade it: {_INSTALL_HINT} (or `alembic upgrade head`)"
        )
    if state == _INSUFFICIENT_PRIVILEGE:
        return DatabaseError(
            f"Permission denied: {detail}; grant the role access to the pgqrs tables "
            "(see the least-privilege section of the docs)"
        )
    if state is None and isinstance(exc, OSError | TimeoutError):
        return DatabaseUnavailableError(f"Cannot reach the database: {detail}")
    if state is None and _is_client_configuration(exc):
        return ConfigurationError(f"Invalid connection option: {detail}")
    if state is None and _looks_disconnected(exc):
        return DatabaseUnavailableError(f"Connection to the database was lost: {detail}")
    return DatabaseError(f"Database error: {detail}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else type(exc).__name__


def _is_client_configuration(exc: BaseException) -> bool:
    """Tell asyncpg's ClientConfigurationError (bad sslmode, target_session_attrs, ...)."""
    current: BaseException | None = exc
    for _ in range(4):
        if current is None:
            return False
        if type(current).__name__ == "ClientConfigurationError":
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def _looks_disconnected(exc: BaseException) -> bool:
    if getattr(exc, "connection_invalidated", False):
        return True
    name = type(getattr(exc, "orig", None) or exc).__name__
    return name in {"ConnectionDoesNotExistError", "InterfaceError", "InternalClientError"} or (
        "connection" in str(exc).lower() and "closed" in str(exc).lower()
    )


@contextlib.contextmanager
def translate_db_errors(**context: Any) -> Iterator[None]:
    """Re-raise any driver, SQLAlchemy or socket error inside the block as a pgqrs error.

    pgqrs errors pass through unchanged; so do cancellation and programming errors that
    are not about the database.
    """
    try:
        yield
    except PgqrsError:
        raise
    except (OSError, TimeoutError) as exc:
        raise translate(exc, **context) from exc
    except Exception as exc:
        if _is_driver_error(exc):
            raise translate(exc, **context) from exc
        raise
