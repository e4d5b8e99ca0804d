"""Scenario 7: a DSN's password never shows up in exception text, logs, reprs or the CLI.

Passwords are built from distinctive tokens (``Pw`` + 8 letters or digits) joined by the
characters that break naive redaction: space, ``/``, ``#``, ``?``, ``@``, ``:``, ``%``,
quotes, ``&``, ``=``. Neither a token nor the whole password (raw or percent-encoded) may
appear anywhere: not in ``str``/``repr``/the formatted traceback of the error with its
whole ``__cause__``/``__context__`` chain, not in any log record (all loggers at DEBUG),
not in the repr of any object pgqrs hands out, not on the CLI's stdout or stderr (also with
``-v`` and ``--format json``), and not in a DNS lookup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgqrs import Admin, Consumer, PgqrsError, Producer

from .support import AuthServer, free_port, with_netloc

SEPARATORS = [" ", "/", "#", "?", "@", ":", "%", "'", '"', "&", "=", ";", "\\", "+", "!"]
token = st.text("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789", min_size=8,
                max_size=8).map(lambda t: "Pw" + t)


@st.composite
def passwords(draw: st.DrawFn) -> tuple[str, list[str]]:
    tokens = draw(st.lists(token, min_size=1, max_size=3))
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(tokens) - 1,
                         max_size=len(tokens) - 1))
    password = tokens[0] + "".join(s + t for s, t in zip(seps, tokens[1:], strict=True))
    return password, tokens


def leaks(text: str, password: str, tokens: list[str]) -> list[str]:
    needles = {password, quote(password, safe=""), quote(password), *tokens}
    return sorted(n for n in needles if n and n in text)


def exception_text(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args)]
        # Follow the chain the way a printed traceback does.
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return "\n".join(parts)


def context(texts: list[str], needles: list[str]) -> str:
    """The text around the first leaked needle."""
    for text in texts:
        for needle in needles:
            at = text.find(needle)
            if at >= 0:
                return text[max(0, at - 150):at + 100]
    return ""


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        self.texts.append(text)


@pytest.fixture
def all_logs() -> Iterator[Capture]:
    """Every log record of every logger; pgqrs's, SQLAlchemy's, asyncpg's, alembic's and
    asyncio's at DEBUG."""
    handler = Capture()
    saved = []
    for name in ("pgqrs", "sqlalchemy", "asyncpg", "alembic", "asyncio"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level in saved:
            logger.setLevel(level)


def dsn_forms(password: str, port: int, database: str = "postgres",
              user: str = "secret_user") -> list[str]:
    encoded = quote(password, safe="")
    base = f"127.0.0.1:{port}/{database}"
    return [
        f"postgresql://{user}:{encoded}@{base}",                     # correct encoding
        f"postgresql://{user}:{password}@{base}",                    # raw, as people type it
        f"postgres://{user}:{encoded}@{base}?sslmode=disable",
        f"postgresql+asyncpg://{user}@{base}?password={encoded}",   # libpq query form
        f"postgresql://{user}:{encoded}@{base}?connect_timeout=abc",  # invalid option
        f"postgresql://{user}:{encoded}@127.0.0.1:notaport/{database}",
        f"postgresql://{user}:{encoded}@127.0.0.1:99999/{database}",
        f"mysql://{user}:{password}@{base}",                         # wrong scheme
        f"host=127.0.0.1 port={port} user={user} password={password}",  # libpq key=value
        f"postgresql://{user}:{encoded}@{base}?sslmode=bogus",
    ]


async def exercise(dsn: str) -> tuple[list[str], list[BaseException]]:
    """Use ``dsn`` the ways an application would; the reprs seen and the errors raised."""
    texts: list[str] = []
    errors: list[BaseException] = []
    objects: list[Any] = []
    for make in (lambda: Admin(dsn, connect_timeout=2),
                 lambda: Producer(dsn, "tasks", "sec-p", 1, connect_timeout=2),
                 lambda: Consumer(dsn, "tasks", "sec-c", 2, connect_timeout=2)):
        try:
            objects.append(make())
        except Exception as exc:
            errors.append(exc)
    for obj in objects:
        texts += [repr(obj), str(obj), repr(getattr(obj, "settings", None))]
        engine = getattr(getattr(obj, "_db", None), "engine", None)
        texts += [repr(engine), repr(getattr(engine, "url", None))]
        try:
            async with asyncio.timeout(15):
                if isinstance(obj, Admin):
                    await obj.ping()
                    await obj.list_queues()
                elif isinstance(obj, Producer):
                    await obj.enqueue({"x": 1})
                else:
                    await obj.dequeue(1)
        except Exception as exc:
            errors.append(exc)
        finally:
            try:
                await obj.close()
            except Exception as exc:
                errors.append(exc)
    return texts, errors


@pytest.mark.timeout(180)
def test_password_never_leaks(auth_server: AuthServer, all_logs: Capture,
                              lookups: list[str]) -> None:
    closed = free_port()
    with asyncio.Runner() as runner:
        runner.run(auth_server.create_role("secret_user", "the-right-one"))

        @settings(max_examples=int(os.environ.get("PGQRS_HYPOTHESIS_EXAMPLES", 0)) or 15,
                  deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow,
                                         HealthCheck.function_scoped_fixture])
        @given(secret=passwords())
        def prop(secret: tuple[str, list[str]]) -> None:
            password, tokens = secret
            found: list[tuple[str, str, list[str]]] = []
            for port in (auth_server.server.port, closed):
                for dsn in dsn_forms(password, port):
                    all_logs.texts.clear()
                    del lookups[:]
                    texts, errors = runner.run(exercise(dsn))
                    for err in errors:
                        assert isinstance(err, PgqrsError), (dsn, repr(err))
                        texts.append(exception_text(err))
                    texts += all_logs.texts
                    texts += [f"DNS lookup of {name!r}" for name in lookups]
                    leaked = leaks("\n".join(texts), password, tokens)
                    if leaked:
                        found.append((dsn, context(texts, leaked), leaked))
            assert not found, "password leaked:\n" + "\n".join(
                f"  DSN {d!r}\n    -> {w!r}" for d, w, _ in found[:6])

        prop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sep", SEPARATORS)
def test_each_separator(sep: str, auth_server: AuthServer, all_logs: Capture,
                        lookups: list[str]) -> None:
    """One case per awkward character, so a failure names the character at fault."""
    password, tokens = f"PwLeftPart{sep}PwRightPart", ["PwLeftPart", "PwRightPart"]
    found = []
    for port in (auth_server.server.port, free_port()):
        for dsn in dsn_forms(password, port):
            all_logs.texts.clear()
            del lookups[:]
            texts, errors = asyncio.run(exercise(dsn))
            for err in errors:
                assert isinstance(err, PgqrsError), (dsn, repr(err))
                texts.append(exception_text(err))
            texts += all_logs.texts + [f"DNS lookup of {name!r}" for name in lookups]
            leaked = leaks("\n".join(texts), password, tokens)
            if leaked:
                found.append(f"  DSN {dsn!r}\n    -> {context(texts, leaked)!r}")
    assert not found, "password leaked:\n" + "\n".join(found)


@pytest.mark.timeout(120)
def test_password_never_reaches_cli_output(auth_server: AuthServer) -> None:
    asyncio.run(auth_server.create_role("cli_user", "the-right-one"))
    closed = free_port()
    password = "PwCliSecret1 /#?@:PwCliSecret2"
    tokens = ["PwCliSecret1", "PwCliSecret2"]
    port = auth_server.server.port
    runs = [(["-v", "--format", "json", "queue", "list"], False), (["verify"], True)]
    dsns = [*dsn_forms(password, port, user="cli_user"), *dsn_forms(password, closed)[:3],
            with_netloc(auth_server.dsn, user="cli_user", password="the-right-one")]
    found = []
    for dsn in dsns:
        for command, via_env in runs:
            env = {k: v for k, v in os.environ.items() if k not in ("PGQRS_DSN", "DATABASE_URL")}
            args = [sys.executable, "-m", "pgqrs", *command]
            if via_env:
                env["PGQRS_DSN"] = dsn
            else:
                args[3:3] = ["--dsn", dsn]
            out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60,
                                 check=False)
            assert out.returncode in (0, 1), (args, out.stderr)
            text = out.stdout + out.stderr
            assert "Traceback" not in text or "-v" in command, text
            leaked = leaks(text, password, tokens) + leaks(text, "the-right-one", [])
            if leaked:
                found.append((dsn, command, via_env, context([text], leaked)))
    assert not found, "password leaked on the CLI:\n" + "\n".join(
        f"  {c} via {'PGQRS_DSN' if e else '--dsn'} with {d!r}\n    -> {t!r}"
        for d, c, e, t in found[:6])
