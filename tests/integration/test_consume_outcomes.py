"""Every delivery consume() claims is settled exactly once, and the hook sees it after the
database agreed; SIGTERM stops a plain worker gracefully unless the host took the signal."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _sql import sql

from pgqrs import Admin, Consumer, Outcome, Producer, QueueMessage, Settled, ValidationError

PROC = Path(__file__).with_name("consume_proc.py")



async def archive_counts(dsn: str) -> Counter[bool]:
    rows = await sql(dsn, "SELECT dead_letter, count(*) FROM pgqrs_archive GROUP BY 1")
    return Counter({r[0]: r[1] for r in rows})


async def test_each_outcome_once_after_the_database_agreed(dsn: str, queue: str,
                                                          admin: Admin) -> None:
    await admin.update_queue(queue, max_read_ct=3)  # the queue's threshold decides
    async with Producer(dsn, queue, "p", 1) as producer:
        ids = await producer.enqueue_batch(
            [{"kind": kind} for kind in ["ok"] * 6 + ["flaky"] * 3 + ["poison"] * 3])
    kinds = dict(zip(ids, ["ok"] * 6 + ["flaky"] * 3 + ["poison"] * 3, strict=True))
    events: list[Settled] = []
    seen_in_db: list[tuple[int, int, str]] = []

    async def handler(message: QueueMessage) -> None:
        await asyncio.sleep(0.01)
        kind = message.payload["kind"]
        if kind == "poison" or (kind == "flaky" and message.read_ct == 1):
            raise ValueError(f"{kind} {message.read_ct}")

    async def on_settled(event: Settled) -> None:
        # What the hook sees has already been committed, from any other connection.
        events.append(event)
        mid = event.message.id
        archived = await sql(dsn, "SELECT dead_letter FROM pgqrs_archive "
                                  "WHERE original_msg_id = $1", mid)
        live = await sql(dsn, "SELECT consumer_worker_id, vt > now() FROM pgqrs_messages "
                              "WHERE id = $1", mid)
        if archived:
            state = "dead" if archived[0][0] else "archived"
        else:
            state = "waiting" if live[0][0] is None and live[0][1] else "held"
        seen_in_db.append((mid, event.message.read_ct, state))

    async with Consumer(dsn, queue, "c", 2) as consumer:
        done = await consumer.consume(handler, batch_size=4, concurrency=4, poll_interval=0.05,
                                      backoff_base=0.1, backoff_max=0.15, stop_when_idle=True,
                                      on_settled=on_settled)

    # Exactly one event per delivery, each with the data of that delivery.
    deliveries = [(e.message.id, e.message.read_ct) for e in events]
    assert len(deliveries) == len(set(deliveries)) == 6 + 3 * 2 + 3 * 3
    by_id: dict[int, list[Settled]] = {}
    for event in events:
        by_id.setdefault(event.message.id, []).append(event)
    expected = {"ok": [Outcome.SUCCEEDED], "flaky": [Outcome.RETRIED, Outcome.SUCCEEDED],
                "poison": [Outcome.RETRIED, Outcome.RETRIED, Outcome.DEAD_LETTERED]}
    for mid, kind in kinds.items():
        history = sorted(by_id[mid], key=lambda e: e.message.read_ct)
        assert [e.outcome for e in history] == expected[kind], kind
        assert [e.message.read_ct for e in history] == list(range(1, len(history) + 1))
        for event in history:
            assert event.duration is not None and 0.01 <= event.duration < 5
            if event.outcome is Outcome.SUCCEEDED:
                assert event.error is None and event.delay is None
            else:
                assert isinstance(event.error, ValueError)
                assert str(event.error) == f"{kind} {event.message.read_ct}"
            if event.outcome is Outcome.RETRIED:
                assert event.delay == min(0.1 * 2 ** (event.message.read_ct - 1), 0.15)
            else:
                assert event.delay is None
    states = {Outcome.SUCCEEDED: "archived", Outcome.DEAD_LETTERED: "dead",
              Outcome.RETRIED: "waiting"}
    assert sorted(seen_in_db) == sorted((e.message.id, e.message.read_ct, states[e.outcome])
                                        for e in events)

    # The counts a metrics exporter would keep equal what the archive shows.
    counts = Counter(e.outcome for e in events)
    archive = await archive_counts(dsn)
    assert counts[Outcome.SUCCEEDED] == archive[False] == done == 9
    assert counts[Outcome.DEAD_LETTERED] == archive[True] == 3
    assert await sql(dsn, "SELECT id FROM pgqrs_messages") == []


async def test_stop_releases_running_handlers_once(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        ids = await producer.enqueue_batch([{"i": i} for i in range(6)])
    started: set[int] = set()
    events: list[Settled] = []

    async def handler(message: QueueMessage) -> None:
        started.add(message.id)
        if message.payload["i"] < 2:
            return  # quick ones succeed before the stop
        if message.payload["i"] == 2:
            # A handler that swallows its cancellation is still released, not archived.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
            return
        await asyncio.sleep(3600)

    stop = asyncio.Event()
    async with Consumer(dsn, queue, "c", 2, visibility_timeout=600) as consumer:
        task = asyncio.create_task(consumer.consume(
            handler, concurrency=10, grace_period=0.3, stop=stop, on_settled=events.append,
            handle_signals=False))
        async with asyncio.timeout(10):
            while len(started) < 6 or len(events) < 2:
                await asyncio.sleep(0.02)
        stop.set()
        assert await asyncio.wait_for(task, 10) == 2
        outcomes = {e.message.id: e.outcome for e in events}
        assert len(events) == 6 and sorted(outcomes) == ids
        assert [outcomes[m] for m in ids] == [Outcome.SUCCEEDED] * 2 + [Outcome.RELEASED] * 4
        for event in events:
            if event.outcome is Outcome.RELEASED:
                assert event.error is None and event.delay is None
                assert event.duration is not None and event.duration >= 0.3
        live = await sql(dsn, "SELECT id, consumer_worker_id, vt <= now(), read_ct "
                              "FROM pgqrs_messages ORDER BY id")
        assert [tuple(r) for r in live] == [(m, None, True, 1) for m in ids[2:]]
        assert await consumer.held_count() == 0
    assert (await archive_counts(dsn))[False] == 2


async def test_a_lost_lease_is_reported_abandoned(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        ok_id, fail_id = await producer.enqueue_batch([{"fail": False}, {"fail": True}])
    events: list[Settled] = []

    async def handler(message: QueueMessage) -> None:
        # Another worker takes the message over behind our back (as after an expired lease).
        await sql(dsn, "UPDATE pgqrs_messages SET consumer_worker_id = NULL, "
                       "vt = now() + interval '1 hour' WHERE id = $1", message.id)
        if message.payload["fail"]:
            raise RuntimeError("and it failed")

    async with Consumer(dsn, queue, "c", 2) as consumer:
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.consume(handler, stop=stop, poll_interval=0.05,
                                                    on_settled=events.append))
        async with asyncio.timeout(10):
            while len(events) < 2:
                await asyncio.sleep(0.02)
        stop.set()
        assert await task == 0  # nothing was archived by this consumer
    outcome = {e.message.id: (e.outcome, type(e.error)) for e in events}
    assert outcome == {ok_id: (Outcome.ABANDONED, type(None)),
                       fail_id: (Outcome.ABANDONED, RuntimeError)}
    assert await archive_counts(dsn) == Counter()


async def test_a_failing_hook_does_not_stop_the_loop(dsn: str, queue: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(20)])
    calls: list[Outcome] = []

    async def handler(message: QueueMessage) -> None:
        if message.payload["i"] % 5 == 0 and message.read_ct == 1:
            raise ValueError("retry me")

    def sync_hook(event: Settled) -> None:
        calls.append(event.outcome)
        raise RuntimeError("hook bug")

    async def async_hook(event: Settled) -> None:
        calls.append(event.outcome)
        await asyncio.sleep(0)
        raise RuntimeError("async hook bug")

    with caplog.at_level(logging.ERROR, logger="pgqrs"):
        for name, hook in (("a", sync_hook), ("b", async_hook)):
            async with Consumer(dsn, queue, name, 2) as consumer:
                done = await consumer.consume(handler, backoff_base=0, poll_interval=0.05,
                                              stop_when_idle=True, on_settled=hook)
            assert done == (20 if name == "a" else 0)
    assert Counter(calls) == {Outcome.SUCCEEDED: 20, Outcome.RETRIED: 4}
    failures = [r for r in caplog.records if "on_settled hook failed" in r.getMessage()]
    assert len(failures) == 24 and all(r.exc_info for r in failures)
    assert (await archive_counts(dsn))[False] == 20


async def test_around_handler_wraps_each_call_in_its_task(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        ids = await producer.enqueue_batch([{"i": i} for i in range(4)])
    span: contextvars.ContextVar[int | None] = contextvars.ContextVar("span", default=None)
    log: list[tuple[str, int, object]] = []

    @contextlib.asynccontextmanager
    async def traced(message: QueueMessage) -> AsyncIterator[None]:
        if message.payload["i"] == 3 and message.read_ct == 1:
            raise ConnectionError("tracer down")  # counts as a failed handler: retried
        token = span.set(message.id)
        try:
            yield
        except Exception as exc:
            log.append(("error", message.id, type(exc)))
            raise
        finally:
            span.reset(token)
        log.append(("ok", message.id, None))

    async def handler(message: QueueMessage) -> None:
        assert span.get() == message.id  # the wrapper's context is the handler's
        if message.payload["i"] == 2 and message.read_ct == 1:
            raise KeyError("once")

    events: list[Settled] = []
    async with Consumer(dsn, queue, "c", 2) as consumer:
        done = await consumer.consume(handler, around_handler=traced, backoff_base=0,
                                      poll_interval=0.05, stop_when_idle=True,
                                      on_settled=events.append)
    assert done == 4
    assert span.get() is None
    assert sorted(e for e in log if e[0] == "error") == [("error", ids[2], KeyError)]
    assert sorted(e[1] for e in log if e[0] == "ok") == ids
    retried = {e.message.id: e for e in events if e.outcome is Outcome.RETRIED}
    assert sorted(retried) == [ids[2], ids[3]]
    assert isinstance(retried[ids[3]].error, ConnectionError)
    assert retried[ids[3]].duration is None  # the handler never started
    assert retried[ids[2]].duration is not None


async def test_bad_hooks_and_signal_mode_are_refused(dsn: str, queue: str) -> None:
    async def handler(message: QueueMessage) -> None:
        return None

    async with Consumer(dsn, queue, "c", 2) as consumer:
        for bad in ({"on_settled": 1}, {"around_handler": "x"}, {"handle_signals": "yes"}):
            with pytest.raises(ValidationError):
                await consumer.consume(handler, stop_when_idle=True, **bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="handler"):
            await consumer.consume(None, stop_when_idle=True)  # type: ignore[arg-type]


async def test_default_signal_handling_in_process(dsn: str, queue: str) -> None:
    """In the main thread with default handlers pgqrs takes SIGTERM for the run only;
    with a handler of the host's it leaves the signal alone."""
    async def handler(message: QueueMessage) -> None:
        return None

    outside = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # whatever the runner had
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    async with Consumer(dsn, queue, "c", 2) as consumer:
        task = asyncio.create_task(consumer.consume(handler, poll_interval=0.05))
        await asyncio.sleep(0.2)
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # taken for the run
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, 10) == 0
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before

        host_calls: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: host_calls.append(signum))
        try:
            stop = asyncio.Event()
            task = asyncio.create_task(consumer.consume(handler, stop=stop, poll_interval=0.05))
            await asyncio.sleep(0.2)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.2)
            assert host_calls == [signal.SIGTERM] and not task.done()
            stop.set()
            assert await asyncio.wait_for(task, 10) == 0
        finally:
            signal.signal(signal.SIGTERM, outside)


def _spawn(mode: str, dsn: str, queue: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(PROC), mode, dsn, queue, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _line_starting(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while True:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line, f"process ended before {prefix!r}: {proc.stderr and proc.stderr.read()}"
            if line.startswith(prefix):
                return line.strip()


@pytest.mark.timeout(60)
async def test_sigterm_to_a_plain_consume_script(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(15)])
    proc = _spawn("plain", dsn, queue, 4545)
    await _line_starting(proc, "HOLDING 10")
    leased = await sql(dsn, "SELECT count(*) FROM pgqrs_messages WHERE consumer_worker_id "
                            "IS NOT NULL AND vt > now()")
    assert leased[0][0] == 10
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err
    assert "DONE 0 {'released': 10}" in out, out
    rows = await sql(dsn, "SELECT consumer_worker_id, vt <= now() FROM pgqrs_messages")
    assert len(rows) == 15 and all(r[0] is None and r[1] for r in rows)  # nothing leased
    status = await sql(dsn, "SELECT status::text FROM pgqrs_workers WHERE port = 4545")
    assert status[0][0] == "stopped"


@pytest.mark.timeout(60)
async def test_a_second_sigterm_stops_at_once(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(10)])
    proc = _spawn("plain", dsn, queue, 4546)
    await _line_starting(proc, "HOLDING 10")
    proc.send_signal(signal.SIGTERM)
    await _line_starting(proc, "LOG pgqrs consume: SIGTERM received")
    proc.send_signal(signal.SIGTERM)  # the default handler is back: the process ends now
    await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == -signal.SIGTERM


@pytest.mark.timeout(60)
async def test_a_host_sigterm_handler_is_left_alone(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(3)])
    proc = _spawn("host", dsn, queue, 4646)
    assert await _line_starting(proc, "READY") == "READY True"
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err
    assert "DONE 3 host_handler_calls=1 kept=True" in out, out


async def test_one_lease_timer_per_claim_and_none_left_behind(dsn: str, queue: str) -> None:
    """The lease keeper's timer is armed once per claim, not once per message, and every
    one is cancelled by the time ``consume`` returns: when the handlers finished, and when
    stopping cancelled the ones still running."""
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(25)])
    loop = asyncio.get_running_loop()
    armed: list[asyncio.TimerHandle] = []
    call_later = loop.call_later

    def spy(delay: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        handle = call_later(delay, callback, *args, **kw)
        if getattr(callback, "__name__", "") == "_half_lease":
            armed.append(handle)
        return handle

    async def noop(message: QueueMessage) -> None:
        return None

    loop.call_later = spy  # type: ignore[method-assign]
    try:
        async with Consumer(dsn, queue, "c", 1, visibility_timeout=30) as consumer:
            done = await consumer.consume(noop, batch_size=10, concurrency=10,
                                          stop_when_idle=True)
        assert done == 25
        assert 3 <= len(armed) <= 5, len(armed)  # claims of 10, 10 and 5
        assert all(h.cancelled() for h in armed)

        armed.clear()
        async with Producer(dsn, queue, "p", 1) as producer:
            await producer.enqueue_batch([{"i": i} for i in range(3)])
        started, stop = asyncio.Event(), asyncio.Event()

        async def stuck(message: QueueMessage) -> None:
            started.set()
            await asyncio.Event().wait()

        async with Consumer(dsn, queue, "c", 2, visibility_timeout=30) as consumer:
            run = asyncio.create_task(consumer.consume(stuck, batch_size=3, concurrency=3,
                                                       stop=stop, grace_period=0))
            await asyncio.wait_for(started.wait(), 5)
            stop.set()
            assert await asyncio.wait_for(run, 10) == 0
        assert len(armed) == 1 and armed[0].cancelled()
    finally:
        del loop.call_later
