"""Scenario 6: hostile input, property-based (hypothesis).

Payloads, queue names, worker identities, schema names and DSNs drawn from hostile
strategies: each either round-trips correctly or raises a typed pgqrs error, within a time
bound, without partial writes and without changing the database. Hypothesis runs
derandomized (the same examples on every run) with its example database off; set
``PGQRS_HYPOTHESIS_EXAMPLES`` to explore more.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgqrs import (
    Admin,
    ConfigurationError,
    Consumer,
    PgqrsError,
    Producer,
    QueueAlreadyExistsError,
    SchemaNotInstalledError,
    ValidationError,
)

from .support import AuthServer, free_port, sql, table_counts, with_netloc

SCALE = int(os.environ.get("PGQRS_HYPOTHESIS_EXAMPLES", "0")) or None


def fuzz(examples: int) -> settings:
    return settings(max_examples=SCALE or examples, deadline=None, database=None,
                    derandomize=SCALE is None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example,
                                           HealthCheck.function_scoped_fixture])


def run_sync(runner: asyncio.Runner, coro: Awaitable[Any], bound: float = 20.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(bound):
            return await coro
    return runner.run(bounded())


# -- equality after a JSON round trip -----------------------------------------------------------


def same(sent: Any, got: Any) -> bool:
    """``got`` is what jsonb gives back for ``sent``: tuples become lists, and a float
    written in exponent form (``1e+16``) may come back as the equal int."""
    if sent is None or isinstance(sent, bool):
        return got is sent
    if isinstance(sent, float):
        return type(got) in (int, float) and float(got) == sent
    if isinstance(sent, int):
        return type(got) is int and got == sent
    if isinstance(sent, str):
        return type(got) is str and got == sent
    if isinstance(sent, list | tuple):
        return (type(got) is list and len(got) == len(sent)
                and all(same(a, b) for a, b in zip(sent, got, strict=True)))
    if isinstance(sent, dict):
        return (type(got) is dict and set(got) == set(sent)
                and all(same(v, got[k]) for k, v in sent.items()))
    return False


# -- strategies ---------------------------------------------------------------------------------

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False), any_text,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=25,
)
hostile_leaf = st.one_of(
    json_leaf, st.floats(), st.binary(max_size=8), st.sets(st.integers(), max_size=3),
    st.frozensets(st.text(max_size=3), max_size=2), st.datetimes(), st.dates(),
    st.decimals(), st.complex_numbers(), st.just(object()), st.just(Ellipsis),
    st.integers(min_value=10**4300, max_value=10**4400),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfff", "\\u0000", "\ufeff", "\U0010ffff"]),
)
hostile_key = st.one_of(any_text, st.integers(), st.none(), st.booleans(), st.floats(),
                        st.tuples(st.integers()), st.binary(max_size=4))
hostile_value = st.recursive(
    hostile_leaf,
    lambda inner: (st.lists(inner, max_size=3) | st.tuples(inner, inner)
                   | st.dictionaries(hostile_key, inner, max_size=3)),
    max_leaves=12,
)
payloads = st.one_of(
    st.dictionaries(any_text, json_value, max_size=6),
    st.dictionaries(hostile_key, hostile_value, max_size=4),
    hostile_value,  # not even a dict
)


def nested(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth - 1):
        node["a"] = {}
        node = node["a"]
    return root


# -- payloads -----------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_payloads_round_trip_or_validation_error(dsn: str, queue: str) -> None:
    with asyncio.Runner() as runner:
        producer = Producer(dsn, queue, "fuzz-payloads", 1)
        admin = Admin(dsn)
        run_sync(runner, producer.register())
        messages = run_sync(runner, admin.get_messages())
        outcomes: dict[str, int] = {}

        async def check(payload: Any) -> None:
            before = await table_counts(dsn)
            try:
                mid = await producer.enqueue(payload)
            except ValidationError:
                outcomes["rejected"] = outcomes.get("rejected", 0) + 1
                assert await table_counts(dsn) == before, "a rejected payload changed the db"
                # In a batch, one bad payload rejects the whole batch before any SQL.
                with pytest.raises(ValidationError, match=r"payloads\[1\]"):
                    await producer.enqueue_batch([{"ok": 1}, payload, {"ok": 2}])
                assert await table_counts(dsn) == before
                return
            outcomes["stored"] = outcomes.get("stored", 0) + 1
            stored = await messages.get(mid)
            assert stored is not None and same(payload, stored.payload), (payload, stored)
            assert await messages.delete(mid)
            assert await table_counts(dsn) == before

        @fuzz(200)
        @given(payload=payloads)
        @example(payload={"s": "\x00"})
        @example(payload={"s": "a\u0000b"})
        @example(payload={"s": "\\u0000"})  # a backslash, not a NUL: stored as is
        @example(payload={"f": math.nan})
        @example(payload={"f": math.inf})
        @example(payload={"f": -math.inf})
        @example(payload={1: "int key"})
        @example(payload={None: "None key"})
        @example(payload={("t",): "tuple key"})
        @example(payload={"b": b"bytes"})
        @example(payload={"s": {1, 2}})
        @example(payload={"d": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)})
        @example(payload={"d": decimal.Decimal("1.5")})
        @example(payload={"i": 10**5000})
        @example(payload={"i": 2**64, "j": -(2**63) - 1, "k": 10**300})
        @example(payload={"f": 1e16, "g": 1e308, "h": 5e-324, "z": -0.0})
        @example(payload={"s": "\ud800"})
        @example(payload={"🎉": "ключ 值 \u202e\u200b\ufeff", "": ""})
        @example(payload=nested(32))
        @example(payload=nested(33))
        @example(payload=nested(200))
        @example(payload={"big": "x" * (1024 * 1024)})
        @example(payload={"big": "x" * (1024 * 1024 - 20)})
        @example(payload=[{"not": "a dict"}])
        @example(payload="a string")
        @example(payload=None)
        def prop(payload: Any) -> None:
            run_sync(runner, check(payload))

        try:
            prop()
        finally:
            run_sync(runner, producer.close())
            run_sync(runner, admin.close())
        assert outcomes.get("rejected") and outcomes.get("stored"), outcomes


@pytest.mark.timeout(30)
def test_deep_payload_with_raised_depth_limit_is_a_validation_error(dsn: str,
                                                                    queue: str) -> None:
    """``max_payload_depth`` may be raised up to a safe bound (a limit beyond it is a
    ConfigurationError); deeper payloads give a ValidationError, never a RecursionError."""

    async def go() -> None:
        async with Producer(dsn, queue, "deep0", 1) as producer:
            with pytest.raises(ValidationError, match="deeper than 32"):
                await producer.enqueue(nested(5000))  # the default limit: refused early
        with pytest.raises(ConfigurationError, match="max_payload_depth"):
            Producer(dsn, queue, "deep", 1, max_payload_depth=100_000)
        async with Producer(dsn, queue, "deep", 1, max_payload_depth=500) as producer:
            assert isinstance(await producer.enqueue(nested(200)), int)
            before = await table_counts(dsn)
            for depth in (2_000, 20_000):
                with pytest.raises(PgqrsError):
                    await producer.enqueue(nested(depth))
                with pytest.raises(PgqrsError):
                    await producer.enqueue_batch([nested(depth)])
            assert await table_counts(dsn) == before

    asyncio.run(go())


# -- queue names --------------------------------------------------------------------------------

sql_fragments = st.sampled_from([
    "tasks'; DROP TABLE pgqrs_messages; --", "\"; DELETE FROM pgqrs_queues; --",
    "' OR '1'='1", "$1", "%s", "%(name)s", ":name", "\\", "''", '""', "a\"b'c", "--",
    "/* */", "tasks\n", "\t", " ", "  padded  ", "ünïcødé-名前-🚀", "x" * 255, "x" * 256,
    "", "\x00", "a\x00b", "\u2028", "\ud800", "NULL", "null", "true", "0", "-1",
])


@pytest.mark.timeout(180)
def test_queue_names(dsn: str) -> None:
    with asyncio.Runner() as runner:
        admin = Admin(dsn)
        port = [0]

        async def check(name: Any) -> None:
            before = await table_counts(dsn)
            try:
                info = await admin.create_queue(name)
            except ValidationError:
                assert await table_counts(dsn) == before
                for call in (admin.get_queue, admin.delete_queue, admin.queue_metrics):
                    with pytest.raises(ValidationError):
                        await call(name)
                with pytest.raises(ValidationError):
                    Producer(dsn, name, "h", 1)
                return
            assert info.queue_name == name
            assert (await admin.get_queue(name)).id == info.id
            assert name in [q.queue_name for q in await admin.list_queues()]
            with pytest.raises(QueueAlreadyExistsError):
                await admin.create_queue(name)
            port[0] += 1
            async with Producer(dsn, name, "fuzz-q", port[0]) as producer, \
                    Consumer(dsn, name, "fuzz-q", 30000 + port[0]) as consumer:
                mid = await producer.enqueue({"q": name})
                (got,) = await consumer.dequeue(5)
                assert got.id == mid and got.payload == {"q": name}
                assert await consumer.archive(mid)
            assert (await admin.queue_metrics(name)).archived_messages == 1
            await admin.purge_queue(name)
            await admin.delete_queue(name)
            await admin.purge_old_workers(0)
            assert await table_counts(dsn) == before

        @fuzz(60)
        @given(name=st.one_of(sql_fragments, any_text, st.text(min_size=250, max_size=260),
                              st.integers(), st.none(), st.binary(max_size=5)))
        def prop(name: Any) -> None:
            run_sync(runner, check(name))

        try:
            prop()
        finally:
            run_sync(runner, admin.close())


# -- worker identities --------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_worker_hostnames_and_ports(dsn: str, queue: str) -> None:
    with asyncio.Runner() as runner:
        admin = Admin(dsn)

        async def check(hostname: Any, port: Any) -> None:
            before = await table_counts(dsn)
            try:
                producer = Producer(dsn, queue, hostname, port)
            except ValidationError:
                with pytest.raises(ValidationError):
                    Consumer(dsn, queue, hostname, port)
                assert await table_counts(dsn) == before
                return
            async with producer:
                worker_id = await producer.register()
                info = await admin.get_worker(worker_id)
                assert (info.hostname, info.port) == (hostname, port)
            await admin.delete_worker(worker_id)
            assert await table_counts(dsn) == before

        @fuzz(80)
        @given(hostname=st.one_of(any_text, sql_fragments, st.text(min_size=250, max_size=260),
                                  st.none(), st.integers()),
               port=st.one_of(st.integers(), st.integers(min_value=-1, max_value=65536),
                              st.sampled_from([0, 65535, 65536, -1, 2**31, 2**63, 10**30]),
                              st.floats(), st.booleans(), st.text(max_size=5), st.none()))
        def prop(hostname: Any, port: Any) -> None:
            run_sync(runner, check(hostname, port))

        try:
            prop()
        finally:
            run_sync(runner, admin.close())


# -- schema names -------------------------------------------------------------------------------

schema_attacks = st.sampled_from([
    "public; DROP TABLE pgqrs_messages", 'public"; DROP SCHEMA public CASCADE; --',
    "public--", "pub lic", "pg_catalog", "information_schema", "pg_toast", "pg_temp",
    "nonexistent_schema", "Mixed_Case", "a" * 63, "a" * 64, "", "1abc", "_x", "ünï",
    "public.pgqrs_messages", "PUBLIC", "$1", "%s", "x\x00", "x\n",
])


@pytest.mark.timeout(180)
def test_schema_names(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    namespaces = "SELECT count(*) FROM pg_namespace"
    with asyncio.Runner() as runner:

        async def check(schema: Any) -> None:
            before = (await table_counts(dsn), await sql(dsn, namespaces))
            try:
                admin = Admin(dsn, schema=schema)
            except ConfigurationError:
                for make in (lambda: Producer(dsn, "q", "h", 1, schema=schema),
                             lambda: Consumer(dsn, "q", "h", 1, schema=schema)):
                    with pytest.raises(ConfigurationError):
                        make()
                assert (await table_counts(dsn), await sql(dsn, namespaces)) == before
                return
            async with admin:
                if schema == "public":
                    assert await admin.verify()
                else:
                    with pytest.raises(SchemaNotInstalledError):
                        await admin.verify()
                    with pytest.raises(SchemaNotInstalledError):
                        await admin.list_queues()
            assert (await table_counts(dsn), await sql(dsn, namespaces)) == before

        @fuzz(60)
        @given(schema=st.one_of(schema_attacks, any_text, st.from_regex(
            r"\A[A-Za-z_][A-Za-z0-9_]{0,70}\Z"), st.integers(), st.none()))
        def prop(schema: Any) -> None:
            if schema is None:
                return  # None means "the default schema"
            run_sync(runner, check(schema))

        prop()
        monkeypatch.setenv("PGQRS_SCHEMA", "public; DROP TABLE pgqrs_messages")
        with pytest.raises(ConfigurationError):
            Admin(dsn)
        monkeypatch.delenv("PGQRS_SCHEMA")

        async def mixed_case() -> None:
            async with Admin(dsn, schema="Mixed_Case") as admin:
                await admin.install()
                await admin.create_queue("q")
            async with Producer(dsn, "q", "mc", 1, schema="Mixed_Case") as producer, \
                    Consumer(dsn, "q", "mc", 2, schema="Mixed_Case") as consumer:
                mid = await producer.enqueue({"x": 1})
                assert [m.id for m in await consumer.dequeue()] == [mid]
                assert await consumer.archive(mid)
            rows = await sql(dsn, 'SELECT count(*) FROM "Mixed_Case".pgqrs_archive')
            assert rows[0][0] == 1

        run_sync(runner, mixed_case())


# -- DSNs ---------------------------------------------------------------------------------------


class _Listener:
    """A TCP server on 127.0.0.1 that accepts and then stays silent, or talks nonsense."""

    def __init__(self, reply: bytes | None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.conns: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.reply is None:
                self.conns.append(conn)  # keep it open and say nothing
                continue
            with conn:
                try:
                    conn.settimeout(2)
                    conn.recv(1024)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[_Listener]:
    listener = _Listener(None)
    yield listener
    listener.close()


@pytest.fixture
def junk_server() -> Iterator[_Listener]:
    listener = _Listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    yield listener
    listener.close()


CONNECT = 1.0
BOUND = CONNECT + 4.0  # a failed call must be over well within this


async def attempt(dsn: Any, limit: float = BOUND + 5) -> tuple[str, float]:
    """Try a ping and a producer registration with ``dsn``; the outcome and its time
    (``HANG`` if it was still going after ``limit`` seconds)."""
    began = time.monotonic()
    try:
        admin = Admin(dsn, connect_timeout=CONNECT)
    except ConfigurationError:
        return "ConfigurationError", time.monotonic() - began
    try:
        async with asyncio.timeout(limit):
            try:
                await admin.ping()
                outcome = "ok"
            except PgqrsError as exc:
                outcome = type(exc).__name__
            try:
                async with Producer(dsn, "q", "h", 1, connect_timeout=CONNECT) as producer:
                    await producer.register()
            except PgqrsError:
                pass
    except TimeoutError:
        outcome = "HANG"
    except Exception as exc:
        outcome = f"RAW {type(exc).__module__}.{type(exc).__name__}: {exc}"
    finally:
        await admin.close()
    return outcome, time.monotonic() - began


@pytest.mark.timeout(240)
def test_garbage_dsns(server_dsn: str, lookups: list[str], silent_server: _Listener,
                      junk_server: _Listener) -> None:
    closed = free_port()
    real_port = int(server_dsn.rsplit(":", 1)[1].split("/")[0])
    ports = st.one_of(st.sampled_from([closed, junk_server.port, real_port]),
                      st.integers(min_value=-(2**31), max_value=2**31))
    hosts = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "", "%2Ftmp%2Fnowhere",
                             "127.0.0.1,127.0.0.1", "0.0.0.0"])
    parts = st.text(st.characters(codec="utf-8"), max_size=12)
    params = st.lists(st.tuples(st.sampled_from(["sslmode", "connect_timeout", "options",
                                                 "application_name", "target_session_attrs",
                                                 "host", "port", "user", "dbname", "bogus"]),
                                parts), max_size=3)

    @st.composite
    def dsns(draw: st.DrawFn) -> Any:
        kind = draw(st.sampled_from(["url", "url", "url", "text", "kv", "type"]))
        if kind == "text":
            return draw(st.text(max_size=60))
        if kind == "type":
            return draw(st.one_of(st.none(), st.integers(), st.binary(max_size=10),
                                  st.lists(st.text(max_size=3), max_size=2)))
        if kind == "kv":
            return f"host=127.0.0.1 port={draw(ports)} user={draw(parts)}"
        scheme = draw(st.sampled_from(["postgresql", "postgres", "postgresql+asyncpg",
                                       "POSTGRESQL", "mysql", "http", "", "postgresql:"]))
        user, password, db = draw(parts), draw(parts), draw(parts)
        encode = draw(st.booleans())
        if encode:
            user, password, db = quote(user, safe=""), quote(password, safe=""), quote(db, safe="")
        auth = f"{user}:{password}@" if draw(st.booleans()) else (f"{user}@" if user else "")
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in draw(params))
        return (f"{scheme}://{auth}{draw(hosts)}:{draw(ports)}/{db}"
                + (f"?{query}" if query else ""))

    outcomes: dict[str, int] = {}
    slowest = [0.0]
    with asyncio.Runner() as runner:

        @fuzz(100)
        @given(dsn=dsns())
        @example(dsn="")
        @example(dsn="   ")
        @example(dsn="not a dsn at all")
        @example(dsn="postgresql://")
        @example(dsn="postgresql://127.0.0.1:-1/db")
        @example(dsn="postgresql://127.0.0.1:99999/db")
        @example(dsn="postgresql://127.0.0.1:abc/db")
        @example(dsn=f"postgresql://postgres@127.0.0.1:{closed}/db")
        @example(dsn=f"postgresql://postgres@127.0.0.1:{junk_server.port}/db")
        @example(dsn=f"postgresql://postgres@127.0.0.1:{silent_server.port}/db")
        @example(dsn=f"postgresql://postgres@127.0.0.1:{real_port}/no_such_database")
        @example(dsn=f"postgresql://no_such_role@127.0.0.1:{real_port}/postgres")
        @example(dsn=f"postgresql://postgres@127.0.0.1:{real_port}/postgres?sslmode=require")
        @example(dsn=f"postgresql://postgres@127.0.0.1:{real_port}/postgres?sslmode=bogus")
        @example(dsn=f"postgresql://postgres@127.0.0.1:{real_port}/postgres?bogus=1")
        @example(dsn=f"postgresql://postgres@127.0.0.1:{real_port}/postgres?options=-c%20x")
        @example(dsn="postgresql://postgres@unresolvable.invalid:5432/db")
        @example(dsn="host=127.0.0.1 port=5432")
        def prop(dsn: Any) -> None:
            outcome, took = run_sync(runner, attempt(dsn), bound=60)
            key = outcome.split(":")[0]
            outcomes[key] = outcomes.get(key, 0) + 1
            slowest[0] = max(slowest[0], took)
            assert not outcome.startswith(("RAW", "HANG")), (dsn, outcome)
            assert took < 2 * BOUND, (dsn, outcome, took)

        prop()
    assert "ConfigurationError" in outcomes and "DatabaseUnavailableError" in outcomes, outcomes
    print(f"\ngarbage DSNs: {outcomes} slowest={slowest[0]:.1f}s")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("timeout", ["inf", "nan", "-1", "0", "1e400", "abc", ""])
def test_connect_timeout_in_dsn_is_bounded(timeout: str, silent_server: _Listener) -> None:
    """A connect_timeout that is not a positive finite number must not disable the
    timeout: against a server that never answers, the call still ends (or the DSN is
    refused as a configuration error)."""
    dsn = f"postgresql://u@127.0.0.1:{silent_server.port}/db?connect_timeout={timeout}"
    outcome, took = asyncio.run(attempt(dsn, limit=BOUND))
    assert outcome in {"ConfigurationError", "DatabaseUnavailableError"}, outcome
    assert took < BOUND, f"connect_timeout={timeout}: took {took:.1f}s ({outcome})"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["connect_timeout", "statement_timeout"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_timeouts_are_rejected(name: str, value: float) -> None:
    with pytest.raises(ConfigurationError):
        Admin("postgresql://u@127.0.0.1/db", **{name: value})


@pytest.mark.timeout(60)
def test_wrong_password_and_unreachable_hosts(auth_server: AuthServer,
                                              silent_server: _Listener) -> None:
    async def go() -> None:
        await auth_server.create_role("pw_user", "right-password")
        right = with_netloc(auth_server.dsn, user="pw_user", password="right-password")
        wrong = with_netloc(auth_server.dsn, user="pw_user", password="wrong-password")
        none = with_netloc(auth_server.dsn, user="pw_user")
        assert (await attempt(right))[0] == "ok"
        for dsn in (wrong, none):
            outcome, took = await attempt(dsn)
            assert outcome == "DatabaseError", outcome
            assert took < BOUND
        outcome, took = await attempt(f"postgresql://u@127.0.0.1:{silent_server.port}/db")
        assert outcome == "DatabaseUnavailableError" and took < BOUND, (outcome, took)
        outcome, took = await attempt(f"postgresql://u@127.0.0.1:{free_port()}/db")
        assert outcome == "DatabaseUnavailableError" and took < 2, (outcome, took)

    asyncio.run(go())
