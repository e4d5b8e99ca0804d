"""Consumer: claims messages under a lease and acknowledges them.

Over 400 lines: the class is one public surface (claims, acknowledgements, the fused
acknowledge-and-claim, the worker loop and the original binding's names), and
``consume()``'s docstring is the reference of the loop's behaviour; the loop itself lives
in ``pgqrs._consume``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from pgqrs import _consume, _deliveries, _notify, _tracing, _validation, errors
from pgqrs import maintenance as _maint
from pgqrs._consume import ClaimedHook, Handler, HandlerWrapper, SettledHook
from pgqrs._worker import WorkerClient
from pgqrs.types import QueueMessage, QueuePolicy, WorkerStatus

if TYPE_CHECKING:
    from pgqrs.admin import Admin

log = logging.getLogger("pgqrs")

_READY_ONLY = (WorkerStatus.READY,)
_MIN_WAIT = 0.01
"""Shortest wait between claims of a waiting consumer (seconds)."""
_LISTEN_RECHECK = 5.0
"""Seconds between safety re-checks while LISTEN is active (notifications do the work)."""
_LIVE = (WorkerStatus.READY, WorkerStatus.SUSPENDED)


class Consumer(WorkerClient):
    """Claims messages from one queue with a visibility timeout (lease), at least once.

    A claimed message is invisible to other consumers until its lease ends; then it can
    be claimed again (``read_ct`` counts deliveries). Only the current holder of that
    delivery can archive, delete, extend or release it: pass the ``QueueMessage`` (or its
    id, which names this consumer's delivery of it). The rules come from the queue
    (``Admin.create_queue``, ``Admin.update_queue``), read by every claim: a message
    delivered the queue's ``max_read_ct`` times is a dead letter, never delivered again
    until ``Admin.dlq()`` archives it and ``Admin.replay_dlq()`` puts it back; a claim
    without a lease of its own gets the queue's ``visibility_timeout``; and nothing is
    claimed while the queue is paused.

    Example:
        async with Consumer(dsn, "tasks", "worker-1", 4000) as consumer:
            for message in await consumer.dequeue(limit=10):
                await handle(message.payload)
                await consumer.archive(message.id)

    Args:
        dsn: a PostgreSQL URL, the application's ``AsyncEngine``, or an ``Admin`` whose
            engine and settings to share (the original binding's style).
        queue: name of an existing queue.
        hostname: worker identity, with ``port``.
        port: worker identity, with ``hostname``.
        visibility_timeout: lease in seconds of this consumer's claims, overriding the
            queue's; None (default): the queue's ``visibility_timeout``, as it is at each
            claim.
        max_read_ct: the dead-letter threshold this code expects. The threshold is the
            queue's, never a client's: if given, it is compared with the queue's at
            registration and a different value is refused (``ConfigurationError``);
            change the queue's with ``Admin.update_queue(name, max_read_ct=...)``.
            None (default): no check.
        poll_interval: how often a waiting consumer polls when LISTEN/NOTIFY is not
            available (pgbouncer transaction mode); with it, waits end on notification.
        **options: ``Settings`` options (``schema``, ``heartbeat_interval``, ...).

    Raises:
        ValidationError: ``visibility_timeout``, ``max_read_ct`` or ``poll_interval`` is
            out of range.
    """

    def __init__(self, dsn: str | AsyncEngine | Admin, queue: str, hostname: str, port: int, *,
                 visibility_timeout: float | None = None, max_read_ct: int | None = None,
                 poll_interval: float = 1.0, **options: Any) -> None:
        # Checked before the base registers with an Admin, so a rejected consumer never does.
        self.visibility_timeout: float | None = (
            None if visibility_timeout is None else
            _validation.seconds("visibility_timeout", visibility_timeout, allow_zero=False))
        """The lease this consumer asks for; None: the queue's."""
        self.max_read_ct: int | None = (
            None if max_read_ct is None else
            _validation.positive_int("max_read_ct", max_read_ct))
        """The threshold checked against the queue's at registration; None: no check."""
        self.poll_interval = _validation.seconds("poll_interval", poll_interval,
                                                 allow_zero=False)
        super().__init__(dsn, queue, hostname, port, **options)
        self._listener: _notify.Listener | None = None
        self._listener_loop = 0
        self._deliveries = _deliveries.Deliveries()

    async def dequeue(self, limit: int = 1, *, visibility_timeout: float | None = None,
                      wait: float | None = None) -> list[QueueMessage]:
        """Claim up to ``limit`` visible messages, oldest first; ``[]`` if none.

        Nothing is claimed while the queue is paused (no error: an empty list, or a wait
        that ends when the queue is resumed), and no message the queue counts as a dead
        letter.

        Args:
            limit: most messages to claim.
            visibility_timeout: lease in seconds (default: the consumer's, else the
                queue's). ``message.vt - message.dequeued_at`` is the lease it got.
            wait: block up to this many seconds for a message to arrive (woken by
                LISTEN/NOTIFY, or by polling where notifications are unavailable).

        Raises:
            StateError: the consumer is suspended or stopped.
            ConfigurationError: ``max_read_ct`` was given and differs from the queue's
                (at registration, the first call).
        """
        limit = _validation.positive_int("limit", limit)
        lease = (self.visibility_timeout if visibility_timeout is None else
                 _validation.seconds("visibility_timeout", visibility_timeout,
                                     allow_zero=False))
        patience = _validation.seconds("wait", wait) if wait is not None else 0.0
        return await self._claim(limit, lease, patience)

    async def _register_row(self) -> None:
        """Check the expected threshold against the queue's, then register (see the base)."""
        if self.max_read_ct is not None:
            async with self._db.statement() as conn:
                queue = await self._queues.get(conn, self.queue_name)
            if queue.max_read_ct != self.max_read_ct:
                raise errors.ConfigurationError(
                    f"Consumer(max_read_ct={self.max_read_ct}) does not match queue "
                    f"{self.queue_name!r}, whose dead-letter threshold is "
                    f"{queue.max_read_ct}: the threshold belongs to the queue, not to a "
                    f"client. Leave max_read_ct out to follow the queue, or change it for "
                    f"every client with Admin.update_queue({self.queue_name!r}, "
                    f"max_read_ct={self.max_read_ct})")
        await super()._register_row()

    async def policy(self) -> QueuePolicy:
        """The queue's policy as stored now (one primary-key lookup).

        Raises:
            QueueNotFoundError: the queue was deleted.
        """
        _, queue_id = await self._ids("read the queue's policy", *_LIVE)
        async with self._db.statement() as conn:
            policy = await self._queues.policy(conn, queue_id)
        if policy is None:
            raise errors.QueueNotFoundError(self.queue_name)
        return policy

    async def archive_and_dequeue(
            self, done: Sequence[int | QueueMessage] | int | QueueMessage, limit: int = 1, *,
            visibility_timeout: float | None = None,
            wait: float | None = None) -> tuple[list[bool], list[QueueMessage]]:
        """Archive the messages you finished and claim the next ones, in one round trip.

        What ``archive_batch(done)`` then ``dequeue(limit, ...)`` do, in one statement
        and one commit: a consumer handling one message at a time needs one round trip
        per message, not two. Each acknowledgement is fenced as in ``archive``: pass the
        ``QueueMessage`` (or its id: this consumer's delivery of it); a delivery it no
        longer holds (its lease ran out and it was delivered again) is refused, False.
        The claim never returns a message of ``done`` that is not in an ordered group,
        even a refused one. Messages of ordered groups are archived in a statement of
        their own first (it hands their groups over, so a group's next message can be
        claimed by the same call; a refused one may be claimed again like any other).
        That statement commits by itself: if the call then fails, they stay archived.

        Example:
            acked, messages = await consumer.archive_and_dequeue([], limit=1)
            while messages:
                await handle(messages[0].payload)
                acked, messages = await consumer.archive_and_dequeue(messages, limit=1)

        Args:
            done: the deliveries to archive (``QueueMessage`` objects or ids, or one).
            limit: most messages to claim.
            visibility_timeout: lease in seconds of the claimed messages (default: the
                consumer's, else the queue's).
            wait: if nothing can be claimed, block up to this many seconds for a message
                (as ``dequeue(wait=...)``); the acknowledgements are committed first.

        Returns:
            ``(acked, messages)``: one bool per entry of ``done``, in order (True:
            archived), and the claimed messages, as ``dequeue`` returns them.

        Raises:
            ValidationError: ``done``, ``limit``, ``visibility_timeout`` or ``wait`` is
                invalid.
            StateError: the consumer is suspended or stopped; nothing is archived either
                (use ``archive_batch``, which a suspended consumer may still call).
        """
        return await self._ack_and_dequeue(done, limit, visibility_timeout, wait,
                                           action="archive")

    async def delete_and_dequeue(
            self, done: Sequence[int | QueueMessage] | int | QueueMessage, limit: int = 1, *,
            visibility_timeout: float | None = None,
            wait: float | None = None) -> tuple[list[bool], list[QueueMessage]]:
        """Delete the messages you finished and claim the next ones, in one round trip.

        ``archive_and_dequeue``, deleting instead of archiving (``delete_batch`` then
        ``dequeue``); the same fence, arguments, result and errors.
        """
        return await self._ack_and_dequeue(done, limit, visibility_timeout, wait,
                                           action="delete")

    async def _ack_and_dequeue(self, done: object, limit: int, visibility_timeout: float | None,
                               wait: float | None, *,
                               action: str) -> tuple[list[bool], list[QueueMessage]]:
        items = _validation.deliveries(done)
        limit = _validation.positive_int("limit", limit)
        lease = (self.visibility_timeout if visibility_timeout is None else
                 _validation.seconds("visibility_timeout", visibility_timeout,
                                     allow_zero=False))
        patience = _validation.seconds("wait", wait) if wait is not None else 0.0
        acks = _Acks([self._deliveries.named(m) for m in items], delete=action == "delete")
        messages = await self._claim(limit, lease, patience, acks=acks)
        return acks.results(), messages

    async def _claim(self, limit: int, lease: float | None, wait: float,
                     stop: asyncio.Event | None = None, poll: float | None = None, *,
                     acks: _Acks | None = None) -> list[QueueMessage]:
        """Claim now; if nothing is there and ``wait`` > 0, wait for a wake-up and retry.

        With ``acks``, its deliveries are acknowledged by the first claim, in the same
        statement (grouped ones in one of their own just before); ``acks.done`` then
        holds the acknowledged ids.
        """
        worker_id, queue_id = await self._ids("dequeue", *_READY_ONLY)
        if acks is not None and acks.grouped:
            # They hand their groups over: a statement of their own, before the claim,
            # so that a group's next message can be claimed right away.
            async with self._db.statement() as conn:
                acks.done |= await self._messages.leave(
                    conn, worker_id=worker_id, ids=[i for i, _ in acks.grouped],
                    read_cts=[r.read_ct for _, r in acks.grouped],
                    action="delete" if acks.delete else "archive")
            self._deliveries.forget(acks.grouped)
        plain = acks.plain if acks is not None else []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            # Subscribe before claiming, so a message enqueued in between still wakes us.
            subscription = await self._subscribe(queue_id) if wait > 0 else None
            try:
                async with self._db.statement() as conn:
                    if acks is not None and plain:
                        acked, messages = await self._messages.ack_and_dequeue(
                            conn, queue_id=queue_id, worker_id=worker_id,
                            ids=[i for i, _ in plain], read_cts=[r.read_ct for _, r in plain],
                            limit=limit, lease=lease, delete=acks.delete)
                        acks.done |= acked
                        # Settled or lost (delivered again): either way it is over.
                        self._deliveries.forget(plain)
                        plain = []
                    else:
                        messages = await self._messages.dequeue(
                            conn, queue_id=queue_id, worker_id=worker_id, limit=limit,
                            lease=lease,
                        )
                self._deliveries.record(messages)
                remaining = deadline - loop.time()
                if (messages or subscription is None or remaining <= 0
                        or (stop is not None and stop.is_set())):
                    return messages
                due = await self._seconds_until_due()
                recheck = (_LISTEN_RECHECK if subscription.listening
                           else poll or self.poll_interval)
                timeout = min(remaining, recheck, due if due is not None else recheck)
                # A floor: "due now" can mean a message another consumer is claiming.
                await subscription.wait(max(timeout, _MIN_WAIT), stop)
            finally:
                if subscription is not None:
                    subscription.close()

    async def _subscribe(self, queue_id: int) -> _notify.Subscription:
        if self.settings.pgbouncer:  # no LISTEN through transaction pooling
            return _notify.polling_subscription(queue_id)
        if self._listener is None:
            self._listener_loop = id(asyncio.get_running_loop())
            self._listener = _notify.acquire(self._listener_loop, self._db.identity,
                                             self._messages.channel,
                                             self._db.detached_driver_connection)
        return await self._listener.subscribe(queue_id)

    async def close(self, *, release_held: bool = True) -> None:
        """Release held messages, mark the worker stopped, stop listening; see the base."""
        listener, self._listener = self._listener, None
        try:
            await super().close(release_held=release_held)
        finally:
            if listener is not None:
                await _notify.release(self._listener_loop, self._db.identity, listener)

    async def dequeue_batch(self, limit: int) -> list[QueueMessage]:
        """Claim up to ``limit`` messages with the default lease (original pgqrs name)."""
        return await self.dequeue(limit)

    async def dequeue_batch_with_delay(self, limit: int, vt_seconds: float) -> list[QueueMessage]:
        """Claim up to ``limit`` messages with a lease of ``vt_seconds`` (original name)."""
        return await self.dequeue(limit, visibility_timeout=vt_seconds)

    async def archive_dead(self, message_ids: Sequence[int | QueueMessage]) -> list[bool]:
        """Archive held messages marked as dead letters (the consume loop's give-up path)."""
        return await self._acknowledge(message_ids, action="dead")

    async def archive(self, message_id: int | QueueMessage) -> bool:
        """Move a message this consumer holds to the archive; False if it does not.

        Pass the ``QueueMessage`` (or its id: this consumer's delivery of it). False once
        the message was delivered again (its lease ran out) or is gone.
        """
        return (await self.archive_batch([message_id]))[0]

    async def archive_batch(self, message_ids: Sequence[int | QueueMessage]) -> list[bool]:
        """Archive held messages in one atomic statement; one bool per message, in order.

        Messages of ordered groups take a second statement, which also hands their groups
        over to the next message.
        """
        return await self._acknowledge(message_ids, action="archive")

    async def delete(self, message_id: int | QueueMessage) -> bool:
        """Delete a message this consumer holds; False if it does not hold it."""
        return (await self.delete_batch([message_id]))[0]

    async def delete_batch(self, message_ids: Sequence[int | QueueMessage]) -> list[bool]:
        """Delete held messages in one statement; one bool per message, in order."""
        return await self._acknowledge(message_ids, action="delete")

    async def _acknowledge(self, messages: Sequence[int | QueueMessage], *,
                           action: str) -> list[bool]:
        """Archive (or delete) the held deliveries; one bool per message.

        Each message is fenced by its delivery (``read_ct``) as well as by this worker, so
        a consumer whose identity was taken over cannot settle what was delivered again
        to the new owner. Ungrouped messages go in one statement, grouped ones in another
        that also hands their groups over (see ``repositories._groups``).
        """
        named = [self._deliveries.named(m) for m in _validation.deliveries(messages)]
        if not named:
            return []
        worker_id, _ = await self._ids("acknowledge messages", *_LIVE)
        known = [r for r in named if r is not None]
        async with self._db.statement() as conn:
            done = await self._messages.settle(
                conn, worker_id=worker_id, action=action,
                deliveries=[(i, r.read_ct, r.grouped) for i, r in known])
        # Settled or lost (delivered again): either way this delivery is over.
        self._deliveries.forget(known)
        return [r is not None and r[0] in done for r in named]

    async def extend_visibility(self, message_id: int | QueueMessage, seconds: float) -> bool:
        """Make the lease end ``seconds`` from now; False if this consumer lost the message."""
        (item,) = _validation.deliveries([message_id])
        lease = _validation.seconds("seconds", seconds, allow_zero=False)
        named = self._deliveries.named(item)
        worker_id, _ = await self._ids("extend a lease", *_LIVE)
        if named is None:
            return False
        async with self._db.statement() as conn:
            return await self._messages.extend(conn, worker_id=worker_id, message_id=named[0],
                                               read_ct=named[1].read_ct, seconds=lease)

    async def release(self, message_ids: Sequence[int | QueueMessage] | int | QueueMessage, *,
                      delay: float | None = None) -> int:
        """Give held messages back (nack): visible again now, or after ``delay`` seconds.

        A released group head stays its group's head: it is delivered again first.

        Returns:
            How many of the messages this consumer still held and released.
        """
        items = _validation.deliveries(message_ids)
        seconds = _validation.seconds("delay", delay) if delay is not None else None
        if not items:
            return 0
        known = [r for r in map(self._deliveries.named, items) if r is not None]
        worker_id, _ = await self._ids("release messages", *_LIVE)
        if not known:
            return 0
        async with self._db.statement() as conn:
            released = await self._messages.release(
                conn, worker_id=worker_id, ids=[i for i, _ in known],
                read_cts=[r.read_ct for _, r in known], delay=seconds)
        self._deliveries.forget(known)
        return len(released)

    async def _seconds_until_due(self) -> float | None:
        """Seconds until a delayed or leased message of this queue becomes claimable."""
        _, queue_id = await self._ids("dequeue", *_LIVE)
        async with self._db.statement() as conn:
            # Idle: a good moment to hand over a group whose last remover died before it
            # could (see repositories._groups); its next message is then due at once.
            await self._messages.heal(conn, queue_id=queue_id)
            return await self._messages.seconds_until_due(conn, queue_id=queue_id)

    async def heartbeat(self) -> None:
        """Record a heartbeat now, and hand over this queue's ordered groups left waiting.

        A group waits when the consumer that removed its head died before handing it
        over (see ``repositories._groups``); the background heartbeat fixes that within
        a heartbeat interval. One cheap statement, on an index that is nearly always empty.
        """
        await super().heartbeat()
        if self._queue_id is not None:
            async with self._db.statement() as conn:
                await self._messages.heal(conn, queue_id=self._queue_id)

    async def held_count(self) -> int:
        """How many messages this consumer currently holds."""
        worker_id = await self.register()
        async with self._db.statement() as conn:
            return await self._messages.count(conn, worker_id=worker_id)

    async def _before_shutdown(self) -> None:
        held = await self.held_count()
        if held:
            raise errors.StateError(
                str(self._status), str(WorkerStatus.STOPPED),
                f"the consumer still holds {held} message(s); archive, delete or release "
                "them first (close() releases them for you)",
            )

    async def _release_held(self) -> None:
        # This consumer's own deliveries only: after a takeover, the worker's other
        # leases are the new owner's.
        if self._deliveries:
            await self.release(self._deliveries.ids())

    # -- the worker loop ------------------------------------------------------------------

    async def messages(self, *, batch_size: int = 10,
                       poll_interval: float | None = None) -> AsyncIterator[QueueMessage]:
        """Yield claimed messages forever (waiting on NOTIFY when idle); you ack each one.

        Example:
            async for message in consumer.messages():
                await handle(message.payload)
                await consumer.archive(message.id)
        """
        batch_size = _validation.positive_int("batch_size", batch_size)
        poll = (self.poll_interval if poll_interval is None else
                _validation.seconds("poll_interval", poll_interval, allow_zero=False))
        while True:
            for message in await self._claim(batch_size, self.visibility_timeout,
                                             _consume.IDLE_WAIT, poll=poll):
                yield message

    async def consume(
        self,
        handler: Handler,
        *,
        batch_size: int = 10,
        concurrency: int = 10,
        poll_interval: float | None = None,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        grace_period: float = 30.0,
        stop: asyncio.Event | None = None,
        stop_when_idle: bool = False,
        handle_signals: bool | None = None,
        on_settled: SettledHook | None = None,
        around_handler: HandlerWrapper | None = None,
        on_claimed: ClaimedHook | None = None,
        maintenance: bool | float = False,
    ) -> int:
        """Run ``handler`` on every message until stopped; return how many succeeded.

        Success archives the message: acks are batched, and ride on the loop's next
        claim (``archive_and_dequeue``: one statement for both), or are written on their
        own when no claim follows (stopping, going idle, a full batch of them while
        handlers still run). An exception releases it with
        exponential backoff (``retry_backoff_base * 2**(read_ct-1)``, capped at
        ``retry_backoff_max``); on the last delivery the queue allows (its ``max_read_ct``)
        it goes to the archive as a dead letter instead. Both rules are the queue's,
        read when a handler fails (at most once per ``poll_interval``), so
        ``Admin.update_queue`` reaches a running loop without a restart. A handler
        running longer than half its message's lease gets the lease extended.

        While the queue is paused the loop claims nothing (no error; handlers already
        running finish) and carries on as soon as it is resumed.

        Stopping (``stop`` set, SIGTERM/SIGINT, or cancelling the task running
        ``consume``) takes no new work, lets in-flight handlers finish within
        ``grace_period`` seconds and releases whatever is left.

        Every delivery ends in exactly one ``Settled`` event (succeeded, retried,
        dead-lettered, released on stop, or abandoned when no outcome could be written),
        passed to ``on_settled`` once the database has recorded it: for successes, after
        the batched archive statement committed, so the hook may run a little after the
        handler returned.

        Example:
            async def count(event: Settled) -> None:
                counts[event.outcome] += 1

            await consumer.consume(handle, on_settled=count)

        Args:
            handler: ``async def handler(message) -> Any``.
            batch_size: most messages claimed per dequeue.
            concurrency: most handlers running at once.
            poll_interval: seconds between polls while handlers run and, where
                LISTEN/NOTIFY is unavailable, while idle (default: the consumer's).
            backoff_base: first retry delay in seconds, overriding the queue's
                ``retry_backoff_base``; None (default): the queue's.
            backoff_max: longest retry delay in seconds, overriding the queue's
                ``retry_backoff_max``; None (default): the queue's.
            grace_period: seconds in-flight handlers get to finish when stopping.
            stop: an event that stops the loop when set.
            stop_when_idle: return once nothing is left that could still be delivered to
                this consumer (no visible, delayed or leased messages; dead letters aside).
                A paused queue's messages still count: the loop waits for the resume.
            handle_signals: stop gracefully on SIGTERM and SIGINT. ``None`` (default):
                only in the main thread of a process whose handlers are still Python's
                defaults, so a host's own handlers (uvicorn, gunicorn) are left alone;
                ``True``: take them anyway (main thread only); ``False``: never. The
                previous handlers are restored when the loop returns, and as soon as
                the first signal arrives (a second one acts as without pgqrs).
            on_settled: ``def`` or ``async def hook(event: Settled)``, called once per
                delivery after its outcome is recorded; it runs on the loop's task, so
                keep it quick. An exception it raises is logged and ignored.
            around_handler: ``message -> async context manager`` entered around each
                handler call, in the handler's task (for a tracing span or context
                variables). Whatever it raises counts as the handler failing; an
                exception it swallows counts as success.
            on_claimed: ``def`` or ``async def hook(messages)``, called with the messages
                of each non-empty claim before their handlers start (for metrics such as
                ``pgqrs.prometheus.ConsumeMetrics.claimed``); errors are logged and ignored.
            maintenance: also run the maintenance routine (``pgqrs.maintenance``) for as
                long as this loop runs: True every 60 s, or every this many seconds. One
                runner acts at a time across all processes, whoever started them.

        Raises:
            ValidationError: an option is out of range or a hook is not callable.
            StateError: the worker is stopped, or was taken over by another process.
        """
        # pgqrs.otel.instrument(): a span per delivery around the caller's own hooks.
        around_handler, on_settled = _tracing.consuming(self.queue_name, around_handler,
                                                        on_settled)
        loop = _consume.ConsumeLoop(
            _LoopSource(self), handler, batch_size=batch_size, concurrency=concurrency,
            poll_interval=poll_interval or self.poll_interval, backoff_base=backoff_base,
            backoff_max=backoff_max, grace_period=grace_period, stop=stop,
            stop_when_idle=stop_when_idle, on_settled=on_settled,
            around_handler=around_handler, on_claimed=on_claimed,
        )
        if maintenance is False:
            return await loop.run(handle_signals=handle_signals)
        every = _maint.DEFAULT_INTERVAL if maintenance is True else maintenance
        runner = _maint.start(self._db, every, stop_runner := asyncio.Event())
        try:
            return await loop.run(handle_signals=handle_signals)
        finally:
            stop_runner.set()
            await runner


class _Acks:
    """The deliveries one fused ack-and-claim acknowledges, and what it acknowledged."""

    __slots__ = ("delete", "done", "grouped", "named", "plain")

    def __init__(self, named: list[tuple[int, _deliveries.Receipt] | None], *,
                 delete: bool) -> None:
        self.named = named
        self.delete = delete
        known = [r for r in named if r is not None]
        self.grouped = [r for r in known if r[1].grouped]
        self.plain = [r for r in known if not r[1].grouped]
        self.done: set[int] = set()

    def results(self) -> list[bool]:
        """One bool per named delivery, in order: acknowledged or not."""
        return [r is not None and r[0] in self.done for r in self.named]


class _LoopSource:
    """The Consumer as its consume loop sees it (``_consume.MessageSource``)."""

    __slots__ = ("_consumer",)

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    @property
    def visibility_timeout(self) -> float | None:
        return self._consumer.visibility_timeout

    async def policy(self) -> QueuePolicy:
        return await self._consumer.policy()

    async def claim(self, limit: int, lease: float | None, wait: float,
                    stop: asyncio.Event | None = None,
                    poll: float | None = None) -> list[QueueMessage]:
        return await self._consumer._claim(limit, lease, wait, stop, poll)

    async def claim_after(self, done: Sequence[QueueMessage], limit: int,
                          lease: float | None) -> tuple[list[bool], list[QueueMessage]]:
        # The public method, looked up on each call (as archive_batch below).
        return await self._consumer.archive_and_dequeue(done, limit, visibility_timeout=lease)

    async def seconds_until_due(self) -> float | None:
        return await self._consumer._seconds_until_due()

    async def archive(self, messages: Sequence[int | QueueMessage], *,
                      dead: bool = False) -> list[bool]:
        # Looked up on each call, so a test can wrap the Consumer's public methods.
        if dead:
            return await self._consumer.archive_dead(messages)
        return await self._consumer.archive_batch(messages)

    async def release(self, messages: Sequence[int | QueueMessage], *,
                      delay: float | None = None) -> int:
        return await self._consumer.release(messages, delay=delay)

    async def extend(self, message: int | QueueMessage, seconds: float) -> bool:
        return await self._consumer.extend_visibility(message, seconds)

    async def is_stopped(self) -> bool:
        if self._consumer._replaced:
            return True
        return await self._consumer.status() is WorkerStatus.STOPPED
