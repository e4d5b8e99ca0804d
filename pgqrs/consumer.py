"""Consumer: claims messages under a lease and acknowledges them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from pgqrs import _notify, _validation, errors
from pgqrs._worker import WorkerClient
from pgqrs.types import QueueMessage, WorkerStatus

log = logging.getLogger("pgqrs")

Handler = Callable[[QueueMessage], Awaitable[object]]
"""An async function that processes one message; raising means "failed, retry later"."""

_READY_ONLY = (WorkerStatus.READY,)
_IDLE_WAIT = 60.0
"""How long one idle wait of the consume loop lasts before it starts another."""
_MIN_WAIT = 0.01
"""Shortest wait between claims of a waiting consumer (seconds)."""
_MAX_RETRY_DELAY = 30.0
"""Longest pause of the consume loop between attempts while the database is away."""
_LISTEN_RECHECK = 5.0
"""Seconds between safety re-checks while LISTEN is active (notifications do the work)."""
_LIVE = (WorkerStatus.READY, WorkerStatus.SUSPENDED)


class Consumer(WorkerClient):
    """Claims messages from one queue with a visibility timeout (lease), at least once.

    A claimed message is invisible to other consumers until its lease ends; then it can
    be claimed again (``read_ct`` counts deliveries). Only the current holder can archive,
    delete, extend or release it. A message delivered ``max_read_ct`` times is a dead
    letter: never delivered again until ``Admin.dlq()`` archives it and
    ``Admin.replay_dlq()`` puts it back.

    Example:
        async with Consumer(dsn, "tasks", "worker-1", 4000) as consumer:
            for message in await consumer.dequeue(limit=10):
                await handle(message.payload)
                await consumer.archive(message.id)

    Args:
        dsn: a PostgreSQL URL or the application's ``AsyncEngine``.
        queue: name of an existing queue.
        hostname: worker identity, with ``port``.
        port: worker identity, with ``hostname``.
        visibility_timeout: default lease in seconds.
        max_read_ct: deliveries after which a message is a dead letter.
        poll_interval: how often a waiting consumer polls when LISTEN/NOTIFY is not
            available (pgbouncer transaction mode); with it, waits end on notification.
        **options: ``Settings`` options (``schema``, ``heartbeat_interval``, ...).
    """

    def __init__(self, dsn: str | AsyncEngine, queue: str, hostname: str, port: int, *,
                 visibility_timeout: float = 30, max_read_ct: int = 5,
                 poll_interval: float = 1.0, **options: Any) -> None:
        super().__init__(dsn, queue, hostname, port, **options)
        self.visibility_timeout = _validation.seconds("visibility_timeout", visibility_timeout,
                                                      allow_zero=False)
        self.max_read_ct = _validation.positive_int("max_read_ct", max_read_ct)
        self.poll_interval = _validation.seconds("poll_interval", poll_interval,
                                                 allow_zero=False)
        self._listener: _notify.Listener | None = None
        self._listener_loop = 0

    async def dequeue(self, limit: int = 1, *, visibility_timeout: float | None = None,
                      wait: float | None = None) -> list[QueueMessage]:
        """Claim up to ``limit`` visible messages, oldest first; ``[]`` if none.

        Args:
            limit: most messages to claim.
            visibility_timeout: lease in seconds (default: the consumer's).
            wait: block up to this many seconds for a message to arrive (woken by
                LISTEN/NOTIFY, or by polling where notifications are unavailable).

        Raises:
            StateError: the consumer is suspended or stopped.
        """
        limit = _validation.positive_int("limit", limit)
        lease = (self.visibility_timeout if visibility_timeout is None else
                 _validation.seconds("visibility_timeout", visibility_timeout,
                                     allow_zero=False))
        patience = _validation.seconds("wait", wait) if wait is not None else 0.0
        return await self._claim(limit, lease, patience)

    async def _claim(self, limit: int, lease: float, wait: float,
                     stop: asyncio.Event | None = None,
                     poll: float | None = None) -> list[QueueMessage]:
        """Claim now; if nothing is there and ``wait`` > 0, wait for a wake-up and retry."""
        worker_id, queue_id = await self._ids("dequeue", *_READY_ONLY)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            # Subscribe before claiming, so a message enqueued in between still wakes us.
            subscription = await self._subscribe(queue_id) if wait > 0 else None
            try:
                async with self._db.statement() as conn:
                    messages = await self._messages.dequeue(
                        conn, queue_id=queue_id, worker_id=worker_id, limit=limit,
                        lease=lease,
                    )
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

    async def archive_dead(self, message_ids: Sequence[int]) -> list[bool]:
        """Archive held messages marked as dead letters (the consume loop's give-up path)."""
        return await self._acknowledge(message_ids, dead=True)

    async def archive(self, message_id: int) -> bool:
        """Move a message this consumer holds to the archive; False if it does not hold it."""
        return (await self.archive_batch([message_id]))[0]

    async def archive_batch(self, message_ids: Sequence[int]) -> list[bool]:
        """Archive held messages in one atomic statement; one bool per id, in order."""
        return await self._acknowledge(message_ids)

    async def delete(self, message_id: int) -> bool:
        """Delete a message this consumer holds; False if it does not hold it."""
        return (await self.delete_batch([message_id]))[0]

    async def delete_batch(self, message_ids: Sequence[int]) -> list[bool]:
        """Delete held messages in one statement; one bool per id, in order."""
        return await self._acknowledge(message_ids, delete=True)

    async def _acknowledge(self, message_ids: Sequence[int], *, delete: bool = False,
                           dead: bool = False) -> list[bool]:
        """Archive (or delete) the held messages in one statement; one bool per id."""
        ids = _validation.message_ids(message_ids)
        if not ids:
            return []
        worker_id, _ = await self._ids("acknowledge messages", *_LIVE)
        async with self._db.statement() as conn:
            if delete:
                done = await self._messages.delete(conn, worker_id=worker_id, ids=ids)
            else:
                done = await self._messages.archive(conn, worker_id=worker_id, ids=ids,
                                                    dead=dead)
        return [i in done for i in ids]

    async def extend_visibility(self, message_id: int, seconds: float) -> bool:
        """Make the lease end ``seconds`` from now; False if this consumer lost the message."""
        (mid,) = _validation.message_ids([message_id])
        lease = _validation.seconds("seconds", seconds, allow_zero=False)
        worker_id, _ = await self._ids("extend a lease", *_LIVE)
        async with self._db.statement() as conn:
            return await self._messages.extend(conn, worker_id=worker_id, message_id=mid,
                                               seconds=lease)

    async def release(self, message_ids: Sequence[int] | int, *,
                      delay: float | None = None) -> int:
        """Give held messages back (nack): visible again now, or after ``delay`` seconds.

        Returns:
            How many of the messages this consumer still held and released.
        """
        ids = _validation.message_ids(message_ids)
        seconds = _validation.seconds("delay", delay) if delay is not None else None
        if not ids:
            return 0
        worker_id, _ = await self._ids("release messages", *_LIVE)
        async with self._db.statement() as conn:
            return await self._messages.release(conn, worker_id=worker_id, ids=ids,
                                                delay=seconds)

    async def _seconds_until_due(self) -> float | None:
        """Seconds until a delayed or leased message of this queue becomes claimable."""
        _, queue_id = await self._ids("dequeue", *_LIVE)
        async with self._db.statement() as conn:
            return await self._messages.seconds_until_due(conn, queue_id=queue_id)

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
        assert self._worker_id is not None
        async with self._db.statement() as conn:
            await self._messages.release_worker(conn, self._worker_id)

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
            for message in await self._claim(batch_size, self.visibility_timeout, _IDLE_WAIT,
                                             poll=poll):
                yield message

    async def consume(
        self,
        handler: Handler,
        *,
        batch_size: int = 10,
        concurrency: int = 10,
        poll_interval: float | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        grace_period: float = 30.0,
        stop: asyncio.Event | None = None,
        stop_when_idle: bool = False,
        handle_signals: bool = False,
    ) -> int:
        """Run ``handler`` on every message until stopped; return how many succeeded.

        Success archives the message (acks are batched). An exception releases it with
        exponential backoff (``backoff_base * 2**(read_ct-1)``, capped at ``backoff_max``);
        on the last allowed delivery it goes to the archive as a dead letter instead. A
        handler running longer than half the lease gets its lease extended.

        Stopping (``stop`` set, SIGTERM/SIGINT with ``handle_signals``, or cancelling the
        task running ``consume``) takes no new work, lets in-flight handlers finish within
        ``grace_period`` seconds and releases whatever is left.

        Args:
            handler: ``async def handler(message) -> Any``.
            batch_size: most messages claimed per dequeue.
            concurrency: most handlers running at once.
            poll_interval: seconds between polls while handlers run and, where
                LISTEN/NOTIFY is unavailable, while idle (default: the consumer's).
            backoff_base: first retry delay in seconds.
            backoff_max: longest retry delay in seconds.
            grace_period: seconds in-flight handlers get to finish when stopping.
            stop: an event that stops the loop when set.
            stop_when_idle: return once nothing is left that could still be delivered to
                this consumer (no visible, delayed or leased messages; dead letters aside).
            handle_signals: stop gracefully on SIGTERM and SIGINT (main thread only).
        """
        loop = _ConsumeLoop(self, handler, batch_size=batch_size, concurrency=concurrency,
                            poll_interval=poll_interval or self.poll_interval,
                            backoff_base=backoff_base, backoff_max=backoff_max,
                            grace_period=grace_period,
                            stop=stop or asyncio.Event(), stop_when_idle=stop_when_idle)
        return await loop.run(handle_signals=handle_signals)


class _ConsumeLoop:
    """State of one ``Consumer.consume`` run."""

    def __init__(self, consumer: Consumer, handler: Handler, *, batch_size: int,
                 concurrency: int, poll_interval: float, backoff_base: float,
                 backoff_max: float, grace_period: float, stop: asyncio.Event,
                 stop_when_idle: bool) -> None:
        self.consumer = consumer
        self.handler = handler
        self.batch_size = _validation.positive_int("batch_size", batch_size)
        self.concurrency = _validation.positive_int("concurrency", concurrency)
        self.poll = _validation.seconds("poll_interval", poll_interval, allow_zero=False)
        self.backoff_base = _validation.seconds("backoff_base", backoff_base)
        self.backoff_max = _validation.seconds("backoff_max", backoff_max)
        self.grace = _validation.seconds("grace_period", grace_period)
        self.stop = stop
        self.stop_when_idle = stop_when_idle
        self.in_flight: dict[asyncio.Task[None], QueueMessage] = {}
        self.acks: list[int] = []
        self.succeeded = 0

    async def run(self, *, handle_signals: bool) -> int:
        installed: list[signal.Signals] = []
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self.stop.set)
                    installed.append(sig)
        try:
            await self._claim_loop()
        finally:
            # Also on cancellation: finish or release what we hold, then let it propagate.
            await asyncio.shield(self._drain())
            for sig in installed:
                asyncio.get_running_loop().remove_signal_handler(sig)
        return self.succeeded

    async def _claim_loop(self) -> None:
        failures = 0
        while not self.stop.is_set():
            capacity = self.concurrency - len(self.in_flight)
            if capacity <= 0:
                await asyncio.wait(list(self.in_flight), return_when=asyncio.FIRST_COMPLETED)
                await self._flush()
                continue
            try:
                batch = await self._next_batch(min(self.batch_size, capacity))
                failures = 0
            except errors.StateError:
                # Suspended from outside: pause until resumed; stopped or replaced: end.
                if not await self._paused():
                    return
                continue
            except errors.DatabaseError as exc:
                # The database is away (restart, failover): keep the loop alive and retry.
                failures += 1
                delay = min(self.poll * 2 ** (failures - 1), _MAX_RETRY_DELAY)
                log.warning("pgqrs consume: %s; retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                continue
            if batch is None:
                return
            for message in batch:
                task = asyncio.create_task(self._process(message))
                self.in_flight[task] = message
                task.add_done_callback(self._forget)
            if len(self.acks) >= self.batch_size:
                await self._flush()

    async def _next_batch(self, limit: int) -> list[QueueMessage] | None:
        """Claim what is there now, else wait; None once idle with ``stop_when_idle``."""
        consumer, lease = self.consumer, self.consumer.visibility_timeout
        wait = _IDLE_WAIT
        if self.in_flight or self.acks or self.stop_when_idle:
            batch = await consumer._claim(limit, lease, 0)
            if batch:
                return batch
            while True:
                await self._flush()
                if self.in_flight:
                    await asyncio.wait(list(self.in_flight), timeout=self.poll,
                                       return_when=asyncio.FIRST_COMPLETED)
                    return []
                if not self.acks:
                    break
                # A handler finished (and queued its ack) while we were flushing: flush
                # that too before going idle, or the ack would wait out the idle period.
            if self.stop_when_idle:
                # Idle means nothing left that could still come to us: retries waiting
                # out their backoff and leases running elsewhere count as work to do.
                due = await consumer._seconds_until_due()
                if due is None:
                    return None
                wait = due + self.poll
        # Nothing in hand: claim, and if the queue is empty block until NOTIFY (or polling,
        # or the next due message) or stop.
        return await consumer._claim(limit, lease, wait, self.stop, self.poll)

    async def _paused(self) -> bool:
        """Wait while the worker is suspended; False once it is stopped or replaced."""
        if self.consumer._replaced:
            return False
        try:
            status = await self.consumer.status()
        except errors.DatabaseError:
            status = WorkerStatus.SUSPENDED  # can't tell yet: look again after a pause
        if status is WorkerStatus.STOPPED:
            return False
        await self._sleep(self.poll)
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self.in_flight.pop(task, None)

    async def _process(self, message: QueueMessage) -> None:
        # Most handlers finish long before half the lease: a timer (cheaper than a task
        # per message) starts the lease keeper only for those that do not.
        loop = asyncio.get_running_loop()
        keeper: list[asyncio.Task[None]] = []
        timer = loop.call_later(self.consumer.visibility_timeout / 2, lambda: keeper.append(
            loop.create_task(self._keep_leased(message.id))))
        try:
            await self.handler(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(message, exc)
        else:
            self.acks.append(message.id)
            self.succeeded += 1
        finally:
            timer.cancel()
            for task in keeper:
                task.cancel()

    async def _keep_leased(self, message_id: int) -> None:
        lease = self.consumer.visibility_timeout
        while True:
            try:
                if not await self.consumer.extend_visibility(message_id, lease):
                    return  # lost it (redelivered elsewhere); the ack will be refused
            except errors.PgqrsError as exc:
                log.warning("pgqrs could not extend the lease of %s: %s", message_id, exc)
            await asyncio.sleep(lease / 2)

    async def _failed(self, message: QueueMessage, exc: Exception) -> None:
        try:
            if message.read_ct >= self.consumer.max_read_ct:
                log.error("pgqrs message %s failed %s times, dead-lettered: %r",
                          message.id, message.read_ct, exc)
                await self.consumer.archive_dead([message.id])
            else:
                delay = min(self.backoff_base * 2 ** (message.read_ct - 1), self.backoff_max)
                log.warning("pgqrs message %s failed (attempt %s), retry in %.1fs: %r",
                            message.id, message.read_ct, delay, exc)
                await self.consumer.release([message.id], delay=delay)
        except errors.PgqrsError as db_exc:
            # The lease will run out and the message comes back anyway.
            log.warning("pgqrs could not release message %s: %s", message.id, db_exc)

    async def _flush(self) -> None:
        if not self.acks:
            return
        ids, self.acks = self.acks, []
        try:
            await self.consumer.archive_batch(ids)
        except errors.DatabaseError as exc:
            # Keep them for the next flush; if the leases run out first, the fence refuses
            # the late ack and the messages are redelivered (at least once).
            self.acks[:0] = ids
            log.warning("pgqrs could not archive %d message(s) yet: %s", len(ids), exc)

    async def _drain(self) -> None:
        if self.in_flight:
            _, pending = await asyncio.wait(list(self.in_flight), timeout=self.grace)
            leftover = [self.in_flight[t].id for t in pending if t in self.in_flight]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if leftover:
                with contextlib.suppress(errors.PgqrsError):
                    await self.consumer.release(leftover)
        await self._flush()
