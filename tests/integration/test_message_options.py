"""Message options (SPEC §13): priority, dedup keys, headers, ordered groups; delivery fences.

Every test ends by checking the group invariant from the server's own rows
(``group_invariant``): per group at most one unparked live message, and a
``pgqrs_groups`` row whose count is the number of live messages of the group.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _sql import sql
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from pgqrs import (
    Admin,
    Consumer,
    DatabaseError,
    NewMessage,
    Outcome,
    Producer,
    QueueMessage,
    ValidationError,
)
from pgqrs.repositories import MessageRepository


async def group_invariant(dsn: str) -> None:
    """At most one head per group; the counts in pgqrs_groups are right; a group without a
    head says it needs one (the next claim unparks it)."""
    groups = await sql(dsn, """
        SELECT g.queue_id, g.group_key, g.live, g.needs_head,
               count(m.id) AS actual, count(m.id) FILTER (WHERE NOT m.parked) AS heads
        FROM pgqrs_groups g LEFT JOIN pgqrs_messages m
          ON m.queue_id = g.queue_id AND m.group_key = g.group_key
        GROUP BY 1, 2, 3, 4""")
    for g in groups:
        assert g["live"] == g["actual"], dict(g)
        assert g["heads"] == (0 if g["needs_head"] or not g["live"] else 1), dict(g)
    orphans = await sql(dsn, "SELECT m.id FROM pgqrs_messages m WHERE m.group_key IS NOT NULL "
                             "AND NOT EXISTS (SELECT 1 FROM pgqrs_groups g WHERE g.queue_id = "
                             "m.queue_id AND g.group_key = m.group_key)")
    assert orphans == []
    stray = await sql(dsn, "SELECT id FROM pgqrs_messages WHERE parked AND group_key IS NULL")
    assert stray == []


async def live_groups(dsn: str) -> dict[str, int]:
    rows = await sql(dsn, "SELECT group_key, live FROM pgqrs_groups WHERE live > 0")
    return {r["group_key"]: r["live"] for r in rows}


@pytest.fixture
async def clients(dsn: str, queue: str) -> Any:
    async with Producer(dsn, queue, "p", 1) as producer, \
            Consumer(dsn, queue, "c", 2, visibility_timeout=30) as consumer:
        yield producer, consumer
    await group_invariant(dsn)


async def test_priority_first_then_fifo(clients: Any) -> None:
    producer, consumer = clients
    low1 = await producer.enqueue({"n": "low1"})
    high1 = await producer.enqueue({"n": "high1"}, priority=5)
    low2 = await producer.enqueue({"n": "low2"})
    high2 = await producer.enqueue({"n": "high2"}, priority=5)
    urgent = await producer.enqueue({"n": "urgent"}, priority=32767)
    negative = await producer.enqueue({"n": "negative"}, priority=-3)
    got = await consumer.dequeue(2)
    assert [m.id for m in got] == [urgent, high1] and got[0].priority == 32767
    got = await consumer.dequeue(10)
    assert [m.id for m in got] == [high2, low1, low2, negative]


async def test_a_delayed_high_priority_message_does_not_hold_up_visible_ones(
        clients: Any) -> None:
    producer, consumer = clients
    await producer.enqueue_batch([{"later": i} for i in range(50)], priority=9, delay=3600)
    now = await producer.enqueue({"now": True})
    assert [m.id for m in await consumer.dequeue(5)] == [now]
    assert await consumer.dequeue(5) == []


async def test_a_retried_message_goes_behind_the_ones_visible_before_it(
        clients: Any) -> None:
    producer, consumer = clients
    first, second = await producer.enqueue_batch([{"n": 1}, {"n": 2}])
    (message,) = await consumer.dequeue(1)
    assert message.id == first
    assert await consumer.release(message) == 1
    assert [m.id for m in await consumer.dequeue(1)] == [second]
    assert [m.id for m in await consumer.dequeue(1)] == [first]


async def test_dedup_key_returns_the_live_message_and_frees_on_archive(
        dsn: str, clients: Any) -> None:
    producer, consumer = clients
    first = await producer.enqueue({"v": 1}, dedup_key="order-42")
    assert await producer.enqueue({"v": 2}, dedup_key="order-42") == first
    (held,) = await consumer.dequeue(1)
    # Leased is live too.
    assert await producer.enqueue({"v": 3}, dedup_key="order-42", delay=10) == first
    assert held.dedup_key == "order-42" and held.payload == {"v": 1}
    assert await consumer.archive(held)
    again = await producer.enqueue({"v": 4}, dedup_key="order-42")
    assert again != first
    rows = await sql(dsn, "SELECT payload->>'v' AS v FROM pgqrs_messages")
    assert [r["v"] for r in rows] == ["4"]
    archived = await sql(dsn, "SELECT dedup_key FROM pgqrs_archive")
    assert [r["dedup_key"] for r in archived] == ["order-42"]  # kept, but no longer held


async def test_dedup_keys_are_per_queue(dsn: str, admin: Admin, clients: Any) -> None:
    producer, _ = clients
    await admin.create_queue("other")
    async with Producer(dsn, "other", "p2", 3) as other:
        assert await producer.enqueue({}, dedup_key="k") != await other.enqueue({},
                                                                                dedup_key="k")


async def test_batch_with_repeated_and_live_keys_returns_ids_in_input_order(
        dsn: str, clients: Any) -> None:
    producer, _ = clients
    live = await producer.enqueue({"n": "live"}, dedup_key="b")
    ids = await producer.enqueue_batch([
        NewMessage({"n": 0}, dedup_key="a"),
        {"n": 1},
        NewMessage({"n": 2}, dedup_key="b"),     # held by a live message
        NewMessage({"n": 3}, dedup_key="a"),     # repeats index 0
        NewMessage({"n": 4}, dedup_key="c", priority=7, headers={"h": "v"}),
    ])
    assert ids[2] == live and ids[3] == ids[0]
    assert len(set(ids)) == 4 and ids[0] < ids[1] < ids[4]
    rows = await sql(dsn, "SELECT id, payload->>'n' AS n, priority, headers FROM "
                          "pgqrs_messages ORDER BY id")
    assert [r["n"] for r in rows] == ["live", "0", "1", "4"]
    assert rows[-1]["priority"] == 7


async def test_keyed_enqueue_in_a_lent_session_holds_the_key_only_once_committed(
        dsn: str, clients: Any) -> None:
    producer, _ = clients
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with AsyncSession(engine) as session:
            await session.begin()
            outbox = await producer.enqueue({"v": 1}, dedup_key="relay-1", session=session)
            # The relay retries inside the same transaction: still one message.
            assert await producer.enqueue({"v": 1}, dedup_key="relay-1",
                                          session=session) == outbox
            await session.rollback()
        assert await sql(dsn, "SELECT id FROM pgqrs_messages") == []
        async with AsyncSession(engine) as session, session.begin():
            outbox = await producer.enqueue({"v": 1}, dedup_key="relay-1", session=session,
                                            group="g")
        assert await producer.enqueue({"v": 1}, dedup_key="relay-1") == outbox
        async with engine.connect() as conn:
            await conn.execute(__import__("sqlalchemy").text(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            # Visible to the snapshot: the duplicate is recognised inside RR too.
            assert await producer.enqueue({"v": 2}, dedup_key="relay-1",
                                          connection=conn) == outbox
            await conn.rollback()
    finally:
        await engine.dispose()


async def test_headers_travel_with_the_message_and_into_the_archive(
        dsn: str, admin: Admin, clients: Any) -> None:
    producer, consumer = clients
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
               "tenant": "ac\u00e9me"}
    mid = await producer.enqueue({"x": 1}, headers=headers)
    plain = await producer.enqueue({"x": 2})
    got = await consumer.dequeue(2)
    assert [(m.id, m.headers) for m in got] == [(mid, headers), (plain, {})]
    assert (await (await admin.get_messages()).get(mid)).headers == headers  # type: ignore[union-attr]
    assert await consumer.archive_batch(got) == [True, True]
    archived = await (await admin.get_archive()).list()
    assert [a.headers for a in archived] == [headers, {}]


@pytest.mark.parametrize(("options", "match"), [
    ({"priority": 40000}, "priority"),
    ({"priority": True}, "priority"),
    ({"priority": 1.5}, "priority"),
    ({"dedup_key": ""}, "dedup_key"),
    ({"dedup_key": "x" * 513}, "dedup_key"),
    ({"dedup_key": 42}, "dedup_key"),
    ({"group": "a\x00b"}, "NUL"),
    ({"group": "g" * 256}, "group"),
    ({"headers": {"a": 1}}, "must be a str"),
    ({"headers": {1: "a"}}, "header name"),
    ({"headers": ["a"]}, "dict of str"),
    ({"headers": {f"h{i}": "v" for i in range(65)}}, "limit is 64"),
    ({"headers": {"big": "x" * 20_000}}, "16384"),
])
async def test_options_are_validated_before_any_sql(dsn: str, clients: Any,
                                                    options: dict[str, Any], match: str) -> None:
    producer, _ = clients
    with pytest.raises(ValidationError, match=match):
        await producer.enqueue({"x": 1}, **options)
    with pytest.raises(ValidationError, match=r"payloads\[1\]"):
        await producer.enqueue_batch([{"ok": 1}, NewMessage({"x": 1}, **options)])
    assert await sql(dsn, "SELECT id FROM pgqrs_messages") == []


async def test_group_delivers_in_order_one_at_a_time(dsn: str, clients: Any) -> None:
    producer, consumer = clients
    a1 = await producer.enqueue({"n": "a1"}, group="a")
    a2 = await producer.enqueue({"n": "a2"}, group="a", priority=9)  # no jumping the queue
    b1 = await producer.enqueue({"n": "b1"}, group="b")
    free = await producer.enqueue({"n": "free"})
    a3 = await producer.enqueue({"n": "a3"}, group="a")
    got = await consumer.dequeue(10)
    assert [m.id for m in got] == [a1, b1, free] and got[0].group == "a"
    await group_invariant(dsn)
    assert await consumer.archive(got[0])
    assert [m.id for m in await consumer.dequeue(10)] == [a2]
    # A released head stays the head and comes back first.
    assert await consumer.release([a2]) == 1
    assert [m.id for m in await consumer.dequeue(10)] == [a2]
    assert await consumer.delete(a2)
    assert [m.id for m in await consumer.dequeue(10)] == [a3]
    assert await consumer.archive_batch([a3, b1, free]) == [True] * 3
    assert await live_groups(dsn) == {}


async def test_a_delayed_head_holds_its_group_back(clients: Any) -> None:
    producer, consumer = clients
    later = await producer.enqueue({"n": 1}, group="g", delay=0.4)
    await producer.enqueue({"n": 2}, group="g")
    assert await consumer.dequeue(10) == []
    await asyncio.sleep(0.5)
    assert [m.id for m in await consumer.dequeue(10)] == [later]


async def test_batches_keep_group_order_and_join_existing_groups(dsn: str,
                                                                 clients: Any) -> None:
    producer, consumer = clients
    head = await producer.enqueue({"n": "head"}, group="g")
    ids = await producer.enqueue_batch([
        NewMessage({"n": 1}, group="g"), NewMessage({"n": 2}, group="h"),
        {"n": 3}, NewMessage({"n": 4}, group="h"), NewMessage({"n": 5}, group="g"),
    ])
    await group_invariant(dsn)
    assert [m.id for m in await consumer.dequeue(10)] == [head, ids[1], ids[2]]
    all_in_g = await producer.enqueue_batch([{"i": i} for i in range(3)], group="k")
    seen = []
    for _ in range(3):
        (m,) = [m for m in await consumer.dequeue(10) if m.group == "k"]
        seen.append(m.id)
        await consumer.archive(m)
    assert seen == all_in_g


async def test_grouped_messages_with_keys_count_once(dsn: str, clients: Any) -> None:
    producer, consumer = clients
    first = await producer.enqueue({"n": 1}, group="g", dedup_key="k1")
    assert await producer.enqueue({"n": 1}, group="g", dedup_key="k1") == first
    ids = await producer.enqueue_batch([
        NewMessage({"n": 2}, group="g", dedup_key="k2"),
        NewMessage({"n": 1}, group="g", dedup_key="k1"),
        NewMessage({"n": 3}, group="new", dedup_key="k3"),
        NewMessage({"n": 4}, group="new", dedup_key="k3"),
        NewMessage({"n": 5}, group="new"),
        {"n": 6},
    ])
    assert ids[1] == first and ids[3] == ids[2]
    await group_invariant(dsn)
    assert await live_groups(dsn) == {"g": 2, "new": 2}
    got = await consumer.dequeue(10)
    assert sorted(m.id for m in got) == sorted([first, ids[2], ids[5]])
    # A batch whose keys are all held leaves the groups as they were.
    assert await producer.enqueue_batch([NewMessage({}, group="g", dedup_key="k2")]) == \
           [ids[0]]
    assert await live_groups(dsn) == {"g": 2, "new": 2}
    assert await consumer.archive_batch(got) == [True] * 3


async def test_dead_letters_and_operators_hand_groups_over(dsn: str, admin: Admin,
                                                           clients: Any) -> None:
    producer, consumer = clients
    a = await producer.enqueue_batch([{"n": i} for i in range(4)], group="a")
    await admin.update_queue("tasks", max_read_ct=1)
    (head,) = await consumer.dequeue(10)
    assert head.id == a[0]
    assert await consumer.archive_dead([head]) == [True]
    (head,) = await consumer.dequeue(10, visibility_timeout=0.1)
    assert head.id == a[1]
    await asyncio.sleep(0.2)  # the last lease ran out: a dead letter for dlq()
    assert await admin.dlq() == [a[1]]
    messages = await admin.get_messages()
    assert await messages.delete(a[3])  # a parked one: the head stays
    await group_invariant(dsn)
    assert await messages.archive(a[2])  # the head itself
    assert await live_groups(dsn) == {}
    archive = await admin.get_archive()
    dead = [r for r in await archive.list() if r.dead_letter]
    assert [d.original_msg_id for d in dead] == a[:2] and {d.group for d in dead} == {"a"}


async def test_replay_keeps_priority_headers_and_group(dsn: str, admin: Admin,
                                                       clients: Any) -> None:
    producer, consumer = clients
    dead_id = await producer.enqueue({"n": 1}, group="g", priority=3, headers={"h": "1"},
                                     dedup_key="once")
    (message,) = await consumer.dequeue(1)
    assert await consumer.archive_dead([message]) == [True]
    behind = await producer.enqueue({"n": 2}, group="g")
    (dead,) = await (await admin.get_archive()).list(dead=True)
    replayed = await admin.replay_dlq(dead.id)
    assert replayed is not None and replayed > behind
    rows = await sql(dsn, "SELECT id, priority, headers::text, group_key, dedup_key, parked "
                          "FROM pgqrs_messages WHERE id = $1", replayed)
    assert dict(rows[0]) == {"id": replayed, "priority": 3, "headers": '{"h": "1"}',
                             "group_key": "g", "dedup_key": None, "parked": True}
    assert dead_id != replayed
    assert [m.id for m in await consumer.dequeue(10)] == [behind]


async def test_purge_clears_groups(dsn: str, admin: Admin, clients: Any) -> None:
    producer, consumer = clients
    await producer.enqueue_batch([{"n": i} for i in range(3)], group="g")
    await admin.purge_queue("tasks")
    assert await sql(dsn, "SELECT * FROM pgqrs_groups") == []
    mid = await producer.enqueue({"n": "new"}, group="g")
    assert [m.id for m in await consumer.dequeue(10)] == [mid]


async def test_metrics_count_parked_messages_as_delayed(admin: Admin, clients: Any) -> None:
    producer, _ = clients
    await producer.enqueue_batch([{"n": i} for i in range(3)], group="g")
    metrics = await admin.queue_metrics("tasks")
    assert (metrics.pending_messages, metrics.delayed_messages) == (1, 2)


async def test_a_head_leaving_while_its_group_grows_still_hands_over(
        dsn: str, clients: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race ``needs_head`` is for: a message enqueued into the group (in an open
    transaction) while the head's ack waits for the group's row. The ack's snapshot
    predates the new message, so it cannot unpark it: it flags the group, and its ``heal``
    (a new statement) hands the group over."""
    producer, consumer = clients
    healed: list[int] = []
    real_heal = MessageRepository.heal

    async def spy(self: MessageRepository, *args: Any, **kwargs: Any) -> int:
        healed.append(await real_heal(self, *args, **kwargs))
        return healed[-1]

    monkeypatch.setattr(MessageRepository, "heal", spy)
    head = await producer.enqueue({"n": "head"}, group="g")
    (claimed,) = await consumer.dequeue(1)
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with AsyncSession(engine) as session:
            await session.begin()
            late = await producer.enqueue({"n": "late"}, group="g", session=session)
            ack = asyncio.create_task(consumer.archive(claimed))
            await asyncio.sleep(0.5)
            assert not ack.done()  # waits for the group row the open transaction holds
            await session.commit()
        assert await ack and claimed.id == head
    finally:
        await engine.dispose()
    assert healed == [1]  # handed over by the heal, not by the ack's own statement
    flags = await sql(dsn, "SELECT live, needs_head FROM pgqrs_groups WHERE group_key = 'g'")
    assert [tuple(r) for r in flags] == [(1, False)]
    await group_invariant(dsn)
    assert [m.id for m in await consumer.dequeue(1)] == [late]


async def leave_waiting(dsn: str, group: str) -> None:
    """The state a remover leaves when it dies between its statement and its heal."""
    await sql(dsn, f"""
        WITH gone AS (DELETE FROM pgqrs_messages WHERE group_key = '{group}' AND NOT parked
                      RETURNING queue_id)
        UPDATE pgqrs_groups SET live = live - 1, needs_head = true
        WHERE group_key = '{group}'""")


async def test_groups_left_waiting_by_a_dead_remover_are_handed_over(
        dsn: str, admin: Admin, clients: Any) -> None:
    producer, consumer = clients
    ids = await producer.enqueue_batch([{"n": i} for i in range(4)], group="g")
    await leave_waiting(dsn, "g")
    await group_invariant(dsn)
    assert await consumer.dequeue(5) == []
    # An idle consumer (nothing to claim) heals as it waits.
    got = await consumer.dequeue(5, wait=3)
    assert [m.id for m in got] == [ids[1]]
    await sql(dsn, "UPDATE pgqrs_messages SET vt = now() + interval '1 day' WHERE id = $1",
              ids[1])
    await leave_waiting(dsn, "g")
    await consumer.heartbeat()  # so does every heartbeat
    assert [m.id for m in await consumer.dequeue(5)] == [ids[2]]
    await leave_waiting(dsn, "g")
    await admin.dlq()  # and the maintenance call
    assert [m.id for m in await consumer.dequeue(5)] == [ids[3]]


async def test_a_waiting_consumer_is_woken_to_hand_a_group_over(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, \
            Consumer(dsn, queue, "a", 2) as a, Consumer(dsn, queue, "b", 3) as b:
        await producer.enqueue({"n": 1}, group="g")
        (head,) = await a.dequeue(1)
        engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
        try:
            async with AsyncSession(engine) as session:
                await session.begin()
                late = await producer.enqueue({"n": 2}, group="g", session=session)
                ack = asyncio.create_task(a.archive(head))
                await asyncio.sleep(0.3)
                waiting = asyncio.create_task(b.dequeue(wait=10))
                await asyncio.sleep(0.3)
                await session.commit()
            assert await ack
            got = await asyncio.wait_for(waiting, 5)  # woken by the ack's NOTIFY
            assert [m.id for m in got] == [late]
            assert await b.archive(got[0])
        finally:
            await engine.dispose()


# -- the fence per delivery ------------------------------------------------------------------


async def test_a_taken_over_worker_cannot_settle_the_new_owners_delivery(
        dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        mid = await producer.enqueue({"job": 1})
        grouped = await producer.enqueue({"job": 2}, group="g")
    old = Consumer(dsn, queue, "worker", 7, visibility_timeout=30, heartbeat_interval=60)
    new = Consumer(dsn, queue, "worker", 7, visibility_timeout=30)
    try:
        held = await old.dequeue(10)
        assert sorted(m.id for m in held) == [mid, grouped]
        # The old process stalls: its heartbeat goes stale and another process registers
        # as the same worker, taking the row over (its leases are released).
        await sql(dsn, "UPDATE pgqrs_workers SET heartbeat_at = now() - interval '1 hour'")
        assert await new.register() == old.worker_id
        again = await new.dequeue(10)
        assert sorted(m.id for m in again) == [mid, grouped]
        assert {m.read_ct for m in again} == {2}
        # The stalled process wakes up and acks what it had: refused, by id or by message.
        assert await old.archive_batch([mid, grouped]) == [False, False]
        assert await old.archive_batch(held) == [False, False]
        assert await old.delete(held[0]) is False
        assert await old.extend_visibility(mid, 60) is False
        assert await old.release(held) == 0
        rows = await sql(dsn, "SELECT id, read_ct FROM pgqrs_messages ORDER BY id")
        assert [(r["id"], r["read_ct"]) for r in rows] == [(mid, 2), (grouped, 2)]
        assert await new.archive_batch(again) == [True, True]
    finally:
        await new.close()
        await old.close()
    assert len(await sql(dsn, "SELECT id FROM pgqrs_archive")) == 2


async def test_a_taken_over_consume_loop_cannot_ack_the_new_owners_delivery(
        dsn: str, queue: str) -> None:
    """The consume loop's batched ack carries each delivery: after a takeover, the stalled
    loop's late ack of a message the new owner holds is refused (and reported)."""
    async with Producer(dsn, queue, "p", 1) as producer:
        mid = await producer.enqueue({"job": 1}, group="g")
    started, gate, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    outcomes: list[Outcome] = []

    async def handler(message: QueueMessage) -> None:
        started.set()
        await gate.wait()  # the process stalls mid-handler

    old = Consumer(dsn, queue, "worker", 7, visibility_timeout=30, heartbeat_interval=60)
    loop = asyncio.create_task(old.consume(
        handler, batch_size=1, concurrency=1, poll_interval=0.05, stop=stop,
        handle_signals=False, on_settled=lambda event: outcomes.append(event.outcome)))
    new = Consumer(dsn, queue, "worker", 7, visibility_timeout=30)
    try:
        await asyncio.wait_for(started.wait(), 10)
        await sql(dsn, "UPDATE pgqrs_workers SET heartbeat_at = now() - interval '1 hour'")
        assert await new.register() == old.worker_id
        (again,) = await new.dequeue(1)
        assert (again.id, again.read_ct) == (mid, 2)
        gate.set()
        for _ in range(200):
            if outcomes:
                break
            await asyncio.sleep(0.02)
        assert outcomes == [Outcome.ABANDONED]
        rows = await sql(dsn, "SELECT read_ct FROM pgqrs_messages WHERE id = $1", mid)
        assert [r[0] for r in rows] == [2]  # still live, with the new owner
        assert await new.archive(again)
    finally:
        stop.set()
        gate.set()
        await asyncio.wait_for(loop, 10)
        await new.close()
        await old.close()
    await group_invariant(dsn)


async def test_an_old_delivery_of_a_message_is_refused(clients: Any) -> None:
    producer, consumer = clients
    await producer.enqueue({"n": 1})
    (first,) = await consumer.dequeue(1, visibility_timeout=0.1)
    await asyncio.sleep(0.2)
    (second,) = await consumer.dequeue(1)
    assert second.id == first.id and second.read_ct == first.read_ct + 1
    assert await consumer.extend_visibility(first, 10) is False
    assert await consumer.archive(first) is False
    assert await consumer.archive(second.id)  # the id names the current delivery


async def test_bare_ids_of_deliveries_this_consumer_never_had_are_refused(
        dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, \
            Consumer(dsn, queue, "a", 2) as a, Consumer(dsn, queue, "b", 3) as b:
        mid = await producer.enqueue({"n": 1})
        (held,) = await a.dequeue(1)
        assert await b.archive(mid) is False
        assert await b.archive(held) is False  # the message object, but not b's worker
        assert await a.archive(mid)


async def test_messages_and_ids_mix_in_one_call(clients: Any) -> None:
    producer, consumer = clients
    await producer.enqueue_batch([{"n": i} for i in range(3)])
    one, two, three = await consumer.dequeue(3)
    assert await consumer.archive_batch([one, two.id, 999_999]) == [True, True, False]
    with pytest.raises(ValidationError):
        await consumer.archive_batch([three, "x"])  # type: ignore[list-item]
    assert await consumer.release(three) == 1


async def test_close_releases_only_this_consumers_deliveries(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"n": i} for i in range(2)])
    consumer = Consumer(dsn, queue, "c", 2)
    await consumer.dequeue(2)
    await consumer.close()
    rows = await sql(dsn, "SELECT consumer_worker_id FROM pgqrs_messages")
    assert [r[0] for r in rows] == [None, None]


async def test_a_race_on_one_key_makes_one_message(dsn: str, queue: str) -> None:
    producers = [Producer(dsn, queue, "p", i) for i in range(1, 9)]
    try:
        for _ in range(5):
            ids = await asyncio.gather(*(p.enqueue({"p": i}, dedup_key="same")
                                         for i, p in enumerate(producers)))
            assert len(set(ids)) == 1
            rows = await sql(dsn, "SELECT id FROM pgqrs_messages")
            assert [r["id"] for r in rows] == ids[:1]
            await sql(dsn, "DELETE FROM pgqrs_messages")
    finally:
        for p in producers:
            await p.close()


def test_new_message_defaults_are_the_batch_s() -> None:
    message = NewMessage({"a": 1})
    assert (message.priority, message.dedup_key, message.headers, message.group,
            message.delay) == (None, None, None, None, None)
    assert QueueMessage(1, 1, {}, None, None, 1, None, None, None).headers == {}  # type: ignore[arg-type]
    assert issubclass(DatabaseError, RuntimeError)


def test_the_sync_producer_takes_every_option(dsn: str, queue: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    import pgqrs.sync

    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with pgqrs.sync.Producer(engine, queue, "sync", 5) as producer:
            with Session(engine) as session, session.begin():
                first = producer.enqueue({"n": 1}, priority=3, dedup_key="k", group="g",
                                         headers={"h": "v"}, session=session)
                assert producer.enqueue({"n": 1}, dedup_key="k", group="g",
                                        session=session) == first
            ids = producer.enqueue_batch([NewMessage({"n": 2}, dedup_key="k"), {"n": 3}],
                                         group="g", priority=1)
            assert ids[0] == first
            admin = pgqrs.sync.Admin(engine)
            messages = admin.get_messages()
            got = messages.get(first)
            assert got is not None and (got.priority, got.group, got.headers) == \
                (3, "g", {"h": "v"})
            assert messages.count(queue) == 2
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT live FROM pgqrs_groups")).all()
        assert [r[0] for r in rows] == [2]
    finally:
        engine.dispose()
