"""Checks that run before any SQL: payloads, message options, names, ids; rate limit.

Somewhat over 400 lines: the payload check runs on every enqueued message, and its fast
path (``encode_payload``, ``_settled``) is only sound next to the full walk (``_check``)
whose errors it must reproduce; they stay side by side.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from pgqrs import errors
from pgqrs.models import QUEUE_NAME_MAX_LENGTH
from pgqrs.types import NewMessage, QueueMessage

_INF = float("inf")
S = TypeVar("S")
C = TypeVar("C")


def lent(session: S | None, connection: C | None) -> S | C | None:
    """Return whichever of ``session``/``connection`` the caller lent (at most one)."""
    if session is not None and connection is not None:
        raise errors.ConfigurationError("Pass either session= or connection=, not both")
    return session if session is not None else connection


PRIORITY_MIN, PRIORITY_MAX = -32768, 32767
"""Priorities fit PostgreSQL's ``smallint``."""
DEDUP_KEY_MAX_CHARS = 512
"""Longest deduplication key (it is indexed; 512 characters stay within a btree entry)."""
GROUP_MAX_CHARS = 255
"""Longest group name."""
HEADERS_MAX_COUNT = 64
"""Most headers on one message."""
HEADER_NAME_MAX_CHARS = 256
"""Longest header name."""
HEADERS_MAX_BYTES = 16_384
"""Largest headers map, encoded as JSON (UTF-8)."""


@dataclass(frozen=True, slots=True)
class Options:
    """The validated options of one message, ready for the statements."""

    priority: int = 0
    headers: str | None = None
    """Headers encoded as a JSON object (None: no headers)."""
    group: str | None = None
    dedup_key: str | None = None
    delay: float | None = None


class Item(NamedTuple):
    """One validated message of a batch: its encoded payload and its options.

    A named tuple rather than a frozen dataclass: a batch builds one per message, and a
    frozen dataclass's ``__init__`` costs several times as much.
    """

    payload: str
    options: Options


DEFAULT_OPTIONS = Options()
"""The options of a message given none (shared: ``Options`` is immutable)."""


def priority_value(value: object) -> int:
    """Return ``value`` if it is an int priority in ``PRIORITY_MIN``-``PRIORITY_MAX``."""
    if isinstance(value, bool) or not isinstance(value, int) \
            or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise errors.ValidationError(
            f"priority must be an int from {PRIORITY_MIN} to {PRIORITY_MAX}, got {value!r:.40}")
    return value


def _label(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise errors.ValidationError(
            f"{name} must be a non-empty str of at most {limit} characters, got {value!r:.60}")
    if "\x00" in value:
        raise errors.ValidationError(f"{name} contains a NUL character, which PostgreSQL "
                                     "text cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.ValidationError(f"{name} is not valid UTF-8 (a lone surrogate)") from None
    return value


def dedup_key_value(value: object) -> str | None:
    """Return a usable deduplication key (or None)."""
    return None if value is None else _label("dedup_key", value, DEDUP_KEY_MAX_CHARS)


def group_name(value: object) -> str | None:
    """Return a usable group name (or None)."""
    return None if value is None else _label("group", value, GROUP_MAX_CHARS)


def encode_headers(value: object) -> str | None:
    """Validate a headers map; return it encoded as JSON, or None when there are none.

    Raises:
        ValidationError: not a mapping of str to str, more than ``HEADERS_MAX_COUNT``
            entries, a name empty or over ``HEADER_NAME_MAX_CHARS``, a NUL character, or
            over ``HEADERS_MAX_BYTES`` once encoded.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise errors.ValidationError(
            f"headers must be a dict of str to str, got {type(value).__name__}")
    if len(value) > HEADERS_MAX_COUNT:
        raise errors.ValidationError(
            f"headers has {len(value)} entries; the limit is {HEADERS_MAX_COUNT}")
    for name, text in value.items():
        _label("header name", name, HEADER_NAME_MAX_CHARS)
        if not isinstance(text, str):
            raise errors.ValidationError(
                f"header {name!r:.60} must be a str, got {type(text).__name__}")
        if "\x00" in text:
            raise errors.ValidationError(f"header {name!r:.60} contains a NUL character")
    if not value:
        return None
    try:
        encoded = json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False)
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        raise errors.ValidationError("headers are not valid UTF-8 (a lone surrogate)") from None
    if size > HEADERS_MAX_BYTES:
        raise errors.ValidationError(
            f"headers are {size} bytes as JSON, over the limit of {HEADERS_MAX_BYTES} bytes "
            "(put data in the payload; headers are for small metadata)")
    return encoded


def options(*, priority: object = 0, headers: object = None, group: object = None,
            dedup_key: object = None, delay: object = None) -> Options:
    """Validate the options of one message."""
    if priority.__class__ is int and priority == 0 and headers is None and group is None \
            and dedup_key is None and delay is None:
        return DEFAULT_OPTIONS  # the usual call: nothing to check, nothing to build
    return Options(
        priority=priority_value(priority), headers=encode_headers(headers),
        group=group_name(group), dedup_key=dedup_key_value(dedup_key),
        delay=None if delay is None else seconds("delay", delay))


def batch_items(items: object, *, max_bytes: int, max_depth: int,
                defaults: Options) -> list[Item]:
    """Validate a batch of payloads (dicts, taking ``defaults``) and ``NewMessage`` items.

    Raises:
        ValidationError: not a list, or one item is rejected (its index is named).
    """
    if isinstance(items, dict | str | bytes) or not isinstance(items, Sequence):
        raise errors.ValidationError(
            f"payloads must be a list of dicts or NewMessage, got {type(items).__name__}")
    out: list[Item] = []
    append = out.append
    for index, item in enumerate(items):
        try:
            if isinstance(item, NewMessage):
                given = options(
                    priority=defaults.priority if item.priority is None else item.priority,
                    headers=item.headers, group=item.group, dedup_key=item.dedup_key,
                    delay=item.delay)
                chosen = Options(
                    priority=given.priority,
                    headers=given.headers if item.headers is not None else defaults.headers,
                    group=given.group if item.group is not None else defaults.group,
                    dedup_key=given.dedup_key,
                    delay=given.delay if item.delay is not None else defaults.delay)
                payload = encode_payload(item.payload, max_bytes=max_bytes,
                                         max_depth=max_depth)
            else:
                append(Item(encode_payload(item, max_bytes=max_bytes, max_depth=max_depth),
                            defaults))
                continue
        except errors.ValidationError as exc:
            raise errors.ValidationError(f"payloads[{index}]: {exc}") from None
        append(Item(payload, chosen))
    return out


def deliveries(messages: object) -> list[int | QueueMessage]:
    """Return ``messages`` (ids or ``QueueMessage`` objects, or one of either) as a list.

    Raises:
        ValidationError: anything else, or an id that is not a positive int.
    """
    if isinstance(messages, QueueMessage):
        return [messages]
    if isinstance(messages, list | tuple) and any(isinstance(m, QueueMessage)
                                                  for m in messages):
        out: list[int | QueueMessage] = []
        for m in messages:
            out.extend([m] if isinstance(m, QueueMessage) else message_ids([m]))
        return out
    return list(message_ids(messages))


def encode_payload(payload: object, *, max_bytes: int, max_depth: int) -> str:
    """Validate ``payload`` and return it encoded as compact JSON.

    Raises:
        ValidationError: not a dict, not JSON-serialisable, NaN/Infinity, a NUL character
            (jsonb cannot store it), nested deeper than ``max_depth`` or larger than
            ``max_bytes`` once encoded.
    """
    if not isinstance(payload, dict):
        raise errors.ValidationError(
            f"Payload must be a dict, got {type(payload).__name__}"
        )
    # One pass in C does most of the checking: the encoder rejects every type JSON has no
    # form for and NaN/Infinity. What it lets through is checked on its output, which
    # bounds what it can hide (see ``_settled``); only a payload with nested objects or a
    # suspicious character is walked, by ``_check``, which names the offending path. Any
    # failure of the encoder walks first too, so the error is the walk's whenever it has
    # one: the same errors as walking before encoding, for a fraction of the cost.
    try:
        encoded = _encode(payload)
    except ValueError as exc:
        _check(payload, max_depth)
        raise errors.ValidationError(
            f"Payload is not valid JSON: {exc} (NaN and Infinity are not allowed)"
        ) from None
    except RecursionError:
        _check(payload, max_depth)
        raise errors.ValidationError(
            "Payload is nested too deeply to encode; flatten it (lower max_payload_depth)"
        ) from None
    except TypeError:
        _check(payload, max_depth)
        raise
    if not _settled(payload, encoded, max_depth):
        _check(payload, max_depth)
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        raise errors.ValidationError(
            "Payload contains a lone surrogate character and is not valid UTF-8"
        ) from None
    if size > max_bytes:
        raise errors.ValidationError(
            f"Payload is {size} bytes as JSON, over the limit of {max_bytes} bytes "
            "(raise max_payload_bytes or store the data elsewhere and enqueue a reference)"
        )
    return encoded


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False,
                            check_circular=False)
"""``json.dumps(..., allow_nan=False, separators=(",", ":"), ensure_ascii=False)``, built
once. No circular check: a cycle recurses until ``RecursionError``, and ``_check`` then
reports it as nesting deeper than the limit."""
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode_c = None if _c_encoder is None else _c_encoder(
    None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False,
    False)


def _encode(payload: dict[Any, Any]) -> str:
    """Encode with ``_ENCODER``: its C encoder called directly when CPython has one."""
    if _encode_c is None:
        return _ENCODER.encode(payload)
    return "".join(_encode_c(payload, 0))


def _settled(payload: dict[Any, Any], encoded: str, max_depth: int) -> bool:
    r"""True if the encoded payload cannot fail ``_check`` (False: walk it to know).

    Every container writes a ``{`` or ``[``, so their count bounds the depth; the encoder
    escapes a NUL as ``\u0000``, so its absence rules NUL out; and with one ``{`` the
    payload has no nested object, so its own keys are all the keys (``str.join`` takes str
    only). A ``{``, ``[`` or ``\u0000`` inside a string only makes this more cautious.
    """
    if "\\u0000" in encoded or type(payload) is not dict:
        return False
    objects = encoded.count("{")
    if objects != 1 or objects + encoded.count("[") > max_depth:
        return False
    try:
        "".join(payload)
    except TypeError:
        return False
    return True


def _check(payload: dict[Any, Any], max_depth: int) -> None:
    """Walk the payload without recursion (a hostile depth cannot blow the stack).

    Scalars, the bulk of most payloads, are checked in place; a path for the error message
    is only built for containers and on failure.
    """
    stack: list[tuple[Any, int, str]] = [(payload, 1, "payload")]
    while stack:
        container, depth, path = stack.pop()
        if depth > max_depth:
            raise errors.ValidationError(
                f"Payload is nested deeper than {max_depth} levels (at {path[:200]})"
            )
        if isinstance(container, dict):
            items: Any = container.items()
            for key, _ in items:
                if not isinstance(key, str):
                    raise errors.ValidationError(
                        f"{path[:200]} has a key of type {type(key).__name__}; "
                        "JSON keys must be str"
                    )
                if "\x00" in key:
                    _nul(f"{path[:200]} key {key[:20]!r}")
        else:
            items = enumerate(container)
        for key, value in items:
            if isinstance(value, str):
                if "\x00" in value:
                    _nul(f"{path[:200]}[{key!r}]")
            elif isinstance(value, float):
                if value != value or value in (_INF, -_INF):
                    raise errors.ValidationError(
                        f"{path[:200]}[{key!r}] is {value}; NaN and Infinity are not JSON")
            elif isinstance(value, dict | list | tuple):
                stack.append((value, depth + 1, f"{path}[{key!r}]"))
            elif not isinstance(value, bool | int | type(None)):
                raise errors.ValidationError(
                    f"{path[:200]}[{key!r}] is a {type(value).__name__}, which is not "
                    "JSON-serialisable (use str, int, float, bool, None, list or dict)"
                )


def _nul(where: str) -> None:
    raise errors.ValidationError(
        f"{where} contains a NUL character (\\u0000), which PostgreSQL jsonb cannot store"
    )


def queue_name(name: object) -> str:
    """Return ``name`` if it is a usable queue name.

    Raises:
        ValidationError: not a str, empty, too long or containing non-printable characters.
    """
    if not isinstance(name, str):
        raise errors.ValidationError(f"Queue name must be a str, got {type(name).__name__}")
    if not name.strip():
        raise errors.ValidationError("Queue name must not be empty")
    if len(name) > QUEUE_NAME_MAX_LENGTH:
        raise errors.ValidationError(
            f"Queue name is {len(name)} characters; the limit is {QUEUE_NAME_MAX_LENGTH}"
        )
    if not name.isprintable():
        raise errors.ValidationError(f"Queue name {name!r} contains non-printable characters")
    return name


def worker_identity(hostname: object, port: object) -> tuple[str, int]:
    """Return ``(hostname, port)`` if usable as a worker identity.

    Raises:
        ValidationError: hostname not a printable non-empty str (≤ 255), or port not an int
            in 0-65535.
    """
    if not isinstance(hostname, str) or not hostname.strip() or len(hostname) > 255 \
            or not hostname.isprintable():
        raise errors.ValidationError(
            f"hostname must be a non-empty printable str of at most 255 characters, "
            f"got {hostname!r:.80}"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise errors.ValidationError(f"port must be an int between 0 and 65535, got {port!r:.40}")
    return hostname, port


def seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Return ``value`` as non-negative seconds (a number), else raise ``ValidationError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
            or value < 0 or (value == 0 and not allow_zero) or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise errors.ValidationError(f"{name} must be a finite number of seconds {bound}, "
                                     f"got {value!r:.40}")
    return float(value)


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise ``ValidationError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.ValidationError(f"{name} must be an int >= 1, got {value!r:.40}")
    return value


def message_ids(ids: object) -> list[int]:
    """Return ``ids`` as a list of ints, else raise ``ValidationError``."""
    if isinstance(ids, int) and not isinstance(ids, bool):
        return [ids]
    if not isinstance(ids, list | tuple | set | frozenset):
        raise errors.ValidationError(f"Expected a list of message ids, got {type(ids).__name__}")
    out = list(ids)
    for i in out:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 < i < 2**63:
            raise errors.ValidationError(f"Message ids must be positive ints, got {i!r:.40}")
    return out


class TokenBucket:
    """Client-side rate limit: waits for tokens instead of failing.

    A request larger than the burst is let through once the bucket is full and leaves it
    in debt, so a big batch is never refused, only paced.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int = 1) -> None:
        """Wait until ``tokens`` may be spent."""
        async with self._lock:
            need = min(float(tokens), self.burst)
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= need:
                    self._tokens -= tokens
                    return
                await asyncio.sleep((need - self._tokens) / self.rate)
