"""The worker loop behind ``Consumer.consume``: claim, run handlers, settle every message.

The loop sees its consumer only through ``MessageSource`` (claim, time until due, and the
statements that record an outcome), so it never touches the Consumer's internals. Every
delivery it claims is settled exactly once, in ``ConsumeLoop._settle``: that is where the
``on_settled`` hook is called, after the database agreed (successes are archived in
batches by ``AckBatcher``). Signal handling lives in ``pgqrs._signals``.

The rules come from the queue (SPEC §12): a claim without a lease of its own gets the
queue's, and a failed handler is dead-lettered or retried by the queue's policy, read on
the failure path at most once per poll interval (``MessageSource.policy``).

Over 400 lines: the loop is one state machine (claiming, running, settling, stopping),
which reads better whole than split across modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol, cast

from pgqrs import _signals, _validation, errors
from pgqrs.types import Outcome, QueueMessage, QueuePolicy, Settled

log = logging.getLogger("pgqrs")

Handler = Callable[[QueueMessage], Awaitable[object]]
"""An async function that processes one message; raising means "failed, retry later"."""
SettledHook = Callable[[Settled], Awaitable[None] | None]
"""``on_settled``: called once per delivery after its outcome is recorded."""
HandlerWrapper = Callable[[QueueMessage], contextlib.AbstractAsyncContextManager[object]]
"""``around_handler``: an async context manager entered around each handler call."""
ClaimedHook = Callable[[Sequence[QueueMessage]], Awaitable[None] | None]
"""``on_claimed``: called with the messages of each non-empty claim, before their handlers."""

IDLE_WAIT = 60.0
"""How long one idle wait of the consume loop lasts before it starts another."""
_MAX_RETRY_DELAY = 30.0
"""Longest pause of the consume loop between attempts while the database is away."""


class MessageSource(Protocol):
    """What the consume loop needs from its consumer, and nothing more."""

    @property
    def visibility_timeout(self) -> float | None:
        """The lease to ask for when claiming, in seconds; None: the queue's."""

    async def policy(self) -> QueuePolicy:
        """The queue's policy as stored now (dead-letter threshold, retry backoff)."""

    async def claim(self, limit: int, lease: float | None, wait: float,
                    stop: asyncio.Event | None = None,
                    poll: float | None = None) -> list[QueueMessage]:
        """Claim up to ``limit`` messages; if none and ``wait`` > 0, wait for some.

        ``lease`` None gives each message the queue's visibility timeout.
        """

    async def claim_after(self, done: Sequence[QueueMessage], limit: int,
                          lease: float | None) -> tuple[list[bool], list[QueueMessage]]:
        """Archive held deliveries and claim up to ``limit`` messages, in one statement.

        One bool per entry of ``done`` (False: not held any more); never waits.
        """

    async def seconds_until_due(self) -> float | None:
        """Seconds until a delayed or leased message becomes claimable; None if none."""

    async def archive(self, messages: Sequence[int | QueueMessage], *,
                      dead: bool = False) -> list[bool]:
        """Archive held deliveries in one statement; one bool each (False: not held).

        A bare id names this consumer's delivery of that message.
        """

    async def release(self, messages: Sequence[int | QueueMessage], *,
                      delay: float | None = None) -> int:
        """Give held deliveries back, visible after ``delay``; return how many were held."""

    async def extend(self, message: int | QueueMessage, seconds: float) -> bool:
        """Extend a held delivery's lease; False if it is no longer held."""

    async def is_stopped(self) -> bool:
        """True once the worker was stopped or taken over from outside."""


class _Delivery:
    """One claimed message on its way through the loop."""

    __slots__ = ("duration", "keeper", "message", "owner", "task", "watch")

    def __init__(self, message: QueueMessage, watch: _LeaseWatch) -> None:
        self.message = message
        self.duration: float | None = None
        # Who settles it: "" while the handler may run, "task" once the handler is done,
        # "drain" once stopping took it over. Set without an await in between, so exactly
        # one of them ever settles the delivery.
        self.owner = ""
        self.watch = watch
        self.task: asyncio.Task[None] | None = None
        """The task running ``_process`` on it (set right after it is created)."""
        self.keeper: asyncio.Task[None] | None = None
        """The lease keeper, started once the handler has run for half the lease."""


class _LeaseWatch:
    """The deliveries of one claim that share a lease length, and one timer for them all.

    Most handlers finish long before half the lease: one timer per claim (not one per
    message) starts the lease keeper at half the lease for those still running, and is
    cancelled as soon as the last of them is done.
    """

    __slots__ = ("deliveries", "lease", "pending", "timer")

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.deliveries: list[_Delivery] = []
        self.pending = 0
        """How many of ``deliveries`` are still in their task."""
        self.timer: asyncio.TimerHandle | None = None


class _Round(NamedTuple):
    """What one claim round produced."""

    messages: list[QueueMessage]
    idle: bool = False
    """``stop_when_idle`` only: nothing is left that could still reach this consumer."""


ClaimAfter = Callable[[list[QueueMessage]], Awaitable[tuple[list[bool], list[QueueMessage]]]]
"""Archive the given deliveries and claim, in one statement (``MessageSource.claim_after``)."""


class AckBatcher:
    """Queues successful deliveries and archives them in one statement per flush.

    When the loop is about to claim anyway, the queued acks ride on that claim
    (``claim_after``): one statement and one commit for both. They are flushed on their
    own only when no claim follows (stopping, going idle, a full batch while handlers
    still run, a suspended worker).
    """

    def __init__(self, archive: Callable[[list[QueueMessage]], Awaitable[list[bool]]],
                 settle: Callable[[list[_Delivery], Outcome], Awaitable[None]]) -> None:
        self._archive = archive
        self._settle = settle
        self._pending: list[_Delivery] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, delivery: _Delivery) -> None:
        """Queue a delivery whose handler returned; ``flush()`` archives it."""
        self._pending.append(delivery)

    async def flush(self) -> None:
        """Archive what is queued; settle each as succeeded, or abandoned if refused.

        On a ``DatabaseError`` the deliveries stay queued for the next flush (if their
        leases run out first, the fence refuses the late ack: delivered again, at least
        once). A ``StateError`` (worker stopped or replaced) abandons them and propagates.
        """
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        await self._archive_batch(batch)

    async def _archive_batch(self, batch: list[_Delivery]) -> None:
        """``flush`` of ``batch``: failures (``DatabaseError``) go back to the queue."""
        try:
            # The messages themselves: each names its delivery (read_ct), so an ack that
            # comes after a redelivery (lease ran out, identity taken over) is refused.
            done = await self._archive([d.message for d in batch])
        except errors.DatabaseError as exc:
            self._pending[:0] = batch
            log.warning("pgqrs could not archive %d message(s) yet: %s", len(batch), exc)
            return
        except errors.StateError:
            await self.abandon(batch)
            raise
        await self._settled(batch, done)

    async def claim_after(self, claim: ClaimAfter) -> list[QueueMessage]:
        """Archive what is queued and claim, in one statement; return what was claimed.

        Deliveries of ordered groups are archived first, on their own (as ``flush``
        does): their statement hands the groups over and commits by itself, so each is
        settled on that statement's result. Were they sent with the claim, a claim that
        failed after their statement committed would queue them again, and the retry,
        refused by the fence, would report archived messages as abandoned. The fused
        statement is atomic: on any error nothing of it was archived, its deliveries stay
        queued, and the error propagates to the loop, which handles it as a failed claim.
        """
        held: list[_Delivery] = []
        grouped = [d for d in self._pending if d.message.group is not None]
        if grouped:
            plain = [d for d in self._pending if d.message.group is None]
            self._pending = []
            try:
                await self._archive_batch(grouped)
            finally:
                # Grouped ones that failed wait for the next flush, out of this claim.
                held, self._pending = self._pending, plain
        batch, self._pending = self._pending, held
        try:
            done, claimed = await claim([d.message for d in batch])
        except BaseException:
            self._pending[:0] = batch
            raise
        await self._settled(batch, done)
        return claimed

    async def _settled(self, batch: list[_Delivery], done: list[bool]) -> None:
        """Settle each of ``batch`` as succeeded, or abandoned if its ack was refused."""
        if all(done):
            await self._settle(batch, Outcome.SUCCEEDED)
            return
        refused = [d for d, ok in zip(batch, done, strict=True) if not ok]
        log.warning("pgqrs could not archive message(s) %s: no longer held by this "
                    "consumer (lease ran out); they will be delivered again",
                    [d.message.id for d in refused])
        await self._settle([d for d, ok in zip(batch, done, strict=True) if ok],
                           Outcome.SUCCEEDED)
        await self._settle(refused, Outcome.ABANDONED)

    async def abandon(self, batch: list[_Delivery] | None = None) -> None:
        """Settle queued deliveries as abandoned (the loop is ending without the database)."""
        if batch is None:
            batch, self._pending = self._pending, []
        if batch:
            await self._settle(batch, Outcome.ABANDONED)


class ConsumeLoop:
    """State of one ``Consumer.consume`` run."""

    def __init__(self, source: MessageSource, handler: Handler, *, batch_size: int,
                 concurrency: int, poll_interval: float, backoff_base: float | None,
                 backoff_max: float | None, grace_period: float, stop: asyncio.Event | None,
                 stop_when_idle: bool, on_settled: SettledHook | None = None,
                 around_handler: HandlerWrapper | None = None,
                 on_claimed: ClaimedHook | None = None) -> None:
        for name, value in (("handler", handler), ("on_settled", on_settled),
                            ("around_handler", around_handler), ("on_claimed", on_claimed)):
            if not callable(value) and (value is not None or name == "handler"):
                raise errors.ValidationError(f"{name} must be callable, got {value!r:.40}")
        self.source = source
        self.handler = handler
        self.batch_size = _validation.positive_int("batch_size", batch_size)
        self.concurrency = _validation.positive_int("concurrency", concurrency)
        self.poll = _validation.seconds("poll_interval", poll_interval, allow_zero=False)
        # Overrides of the queue's retry backoff; what is None follows the queue.
        self.backoff: dict[str, Any] = {
            field: _validation.seconds(name, value)
            for field, name, value in (("retry_backoff_base", "backoff_base", backoff_base),
                                       ("retry_backoff_max", "backoff_max", backoff_max))
            if value is not None}
        self.grace = _validation.seconds("grace_period", grace_period)
        self.stop = stop if stop is not None else asyncio.Event()
        self.stop_when_idle = stop_when_idle
        self.on_settled = on_settled
        self.around_handler = around_handler
        self.on_claimed = on_claimed
        self.in_flight: dict[asyncio.Task[None], _Delivery] = {}
        """The deliveries whose task has not finished; each task takes itself out."""
        self.acks = AckBatcher(source.archive, self._settle)
        # Only a hook needs a handler's duration (``Settled.duration``).
        self._timed = on_settled is not None
        self._watches: set[_LeaseWatch] = set()
        """Lease timers of claims whose handlers are not all done yet."""
        self._waiter: asyncio.Future[None] | None = None
        """Set while the claim loop waits for a free slot; a finishing handler wakes it."""
        self.succeeded = 0
        self._policy: QueuePolicy | None = None
        self._policy_read = 0.0
        self._policy_lock = asyncio.Lock()

    async def run(self, *, handle_signals: bool | None) -> int:
        """Consume until stopped; return how many messages were archived as succeeded."""
        if handle_signals is not None and not isinstance(handle_signals, bool):
            raise errors.ValidationError(
                f"handle_signals must be True, False or None, got {handle_signals!r:.40}")
        with _signals.stop_on_signals(self.stop, handle_signals):
            # Lets a loop that waits on busy handlers notice a stop at once.
            stopping = asyncio.create_task(self.stop.wait())
            stopping.add_done_callback(self._wake)
            try:
                await self._claim_loop()
            finally:
                stopping.cancel()
                # Also on cancellation: finish or release what we hold, then let it propagate.
                await asyncio.shield(self._drain())
                for watch in self._watches:  # handlers cancelled before they started
                    if watch.timer is not None:
                        watch.timer.cancel()
                self._watches.clear()
        return self.succeeded

    # -- claiming ---------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while not self.stop.is_set():
            capacity = self.concurrency - len(self.in_flight)
            if capacity <= 0:
                # The acks of the handlers that finish ride on the next claim (or are
                # flushed by stopping).
                await self._slot_freed()
                continue
            try:
                claimed = await self._next_round(min(self.batch_size, capacity))
                failures = 0
            except errors.StateError:
                # Suspended from outside: pause until resumed; stopped or replaced: end.
                if not await self._paused():
                    return
                # A suspended worker may still archive what it finished.
                await self.acks.flush()
                continue
            except errors.DatabaseError as exc:
                # The database is away (restart, failover): keep the loop alive and retry.
                failures += 1
                delay = min(self.poll * 2 ** (failures - 1), _MAX_RETRY_DELAY)
                log.warning("pgqrs consume: %s; retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                continue
            if claimed.idle:
                return
            if claimed.messages and self.on_claimed is not None:
                await self._claimed(claimed.messages)
            if claimed.messages:
                self._start(claimed.messages)
            if len(self.acks) >= self.batch_size:
                await self.acks.flush()

    def _start(self, messages: list[QueueMessage]) -> None:
        """Start a handler task for each claimed message, and the claim's lease timer."""
        loop = asyncio.get_running_loop()
        watches: dict[float, _LeaseWatch] = {}
        watch: _LeaseWatch | None = None
        vt = dequeued_at = None
        for message in messages:
            # One claim statement gives all its messages the same lease (and the same
            # ``vt`` and ``dequeued_at``); grouped by length anyway, so each keeper starts
            # at half its own message's lease.
            if watch is None or message.vt != vt or message.dequeued_at != dequeued_at:
                vt, dequeued_at = message.vt, message.dequeued_at
                lease = self._lease_of(message)
                watch = watches.get(lease)
                if watch is None:
                    watch = watches[lease] = _LeaseWatch(lease)
                    watch.timer = loop.call_later(lease / 2, self._half_lease, watch)
                    self._watches.add(watch)
            delivery = _Delivery(message, watch)
            watch.deliveries.append(delivery)
            watch.pending += 1
            task = delivery.task = loop.create_task(self._process(delivery))
            self.in_flight[task] = delivery

    async def _slot_freed(self) -> None:
        """Wait until a handler finishes (its ack is then queued), or until stopping."""
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self, _: object = None) -> None:
        """Wake the claim loop if it waits for a free slot (a handler finished, or stop)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next_round(self, limit: int) -> _Round:
        """Claim what is there now, else wait (on handlers, NOTIFY or the next due message)."""
        source, lease = self.source, self.source.visibility_timeout
        wait = IDLE_WAIT
        if self.in_flight or self.acks or self.stop_when_idle:
            if self.acks:
                batch = await self.acks.claim_after(
                    lambda done: source.claim_after(done, limit, lease))
            else:
                batch = await source.claim(limit, lease, 0)
            if batch:
                return _Round(batch)
            while True:
                await self.acks.flush()
                if self.in_flight:
                    await asyncio.wait(list(self.in_flight), timeout=self.poll,
                                       return_when=asyncio.FIRST_COMPLETED)
                    return _Round([])
                if not self.acks:
                    break
                # A handler finished (and queued its ack) while we were flushing: flush
                # that too before going idle, or the ack would wait out the idle period.
            if self.stop_when_idle:
                # Idle means nothing left that could still come to us: retries waiting
                # out their backoff and leases running elsewhere count as work to do.
                due = await source.seconds_until_due()
                if due is None:
                    return _Round([], idle=True)
                wait = due + self.poll
        # Nothing in hand: claim, and if the queue is empty block until NOTIFY (or polling,
        # or the next due message) or stop.
        return _Round(await source.claim(limit, lease, wait, self.stop, self.poll))

    async def _claimed(self, messages: list[QueueMessage]) -> None:
        """Tell the ``on_claimed`` hook (metrics); like ``on_settled``, it never stops the loop."""
        try:
            result = self.on_claimed(messages) if self.on_claimed is not None else None
            if result is not None:
                await result
        except Exception:
            log.exception("pgqrs on_claimed hook failed; the loop carries on")

    async def _paused(self) -> bool:
        """Wait while the worker is suspended; False once it is stopped or replaced."""
        try:
            if await self.source.is_stopped():
                return False
        except errors.DatabaseError:
            pass  # can't tell yet: look again after a pause
        await self._sleep(self.poll)
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    # -- one message ------------------------------------------------------------------------

    async def _process(self, delivery: _Delivery) -> None:
        message = delivery.message
        try:
            error: Exception | None = None
            try:
                if self.around_handler is not None:
                    async with self.around_handler(message):
                        await self._run_handler(delivery)
                elif self._timed:
                    await self._run_handler(delivery)
                else:
                    await self.handler(message)
            except Exception as exc:
                error = exc
            if delivery.owner:
                return  # stopping took it over (a handler that swallowed its cancellation)
            delivery.owner = "task"
            if error is None:
                self.acks.add(delivery)
            else:
                await self._failed(delivery, error)
        finally:
            # The task's own bookkeeping, instead of a done callback: one event loop
            # callback per message fewer. (Only ``_drain`` cancels a task that may not
            # have started, and it no longer counts on ``in_flight`` by then.)
            if delivery.keeper is not None:
                delivery.keeper.cancel()
            watch = delivery.watch
            watch.pending -= 1
            if not watch.pending:
                self._watches.discard(watch)
                watch.deliveries.clear()  # they refer to it: no cycle left for the GC
                if watch.timer is not None:
                    watch.timer.cancel()
            self.in_flight.pop(cast(asyncio.Task[None], delivery.task), None)
            if self._waiter is not None:
                self._wake()

    async def _run_handler(self, delivery: _Delivery) -> None:
        """Run the handler, timing it (for ``Settled.duration``)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self.handler(delivery.message)
        finally:
            delivery.duration = loop.time() - started

    def _half_lease(self, watch: _LeaseWatch) -> None:
        """Half the lease is over: keep extending it for the handlers still running."""
        watch.timer = None
        loop = asyncio.get_running_loop()
        for delivery in watch.deliveries:
            task = delivery.task
            if task is not None and not task.done() and delivery.keeper is None:
                delivery.keeper = loop.create_task(
                    self._keep_leased(delivery.message.id, watch.lease))

    def _lease_of(self, message: QueueMessage) -> float:
        """The lease this delivery got (the consumer's, or the queue's at the claim)."""
        if message.vt is not None and message.dequeued_at is not None:
            seconds = (message.vt - message.dequeued_at).total_seconds()
            if seconds > 0:
                return seconds
        return self.source.visibility_timeout or QueuePolicy().visibility_timeout

    async def _keep_leased(self, message_id: int, lease: float) -> None:
        """Extend the lease by its own length every half lease, while the handler runs."""
        while True:
            try:
                if not await self.source.extend(message_id, lease):
                    return  # lost it (redelivered elsewhere); the ack will be refused
            except errors.PgqrsError as exc:
                log.warning("pgqrs could not extend the lease of %s: %s", message_id, exc)
            await asyncio.sleep(lease / 2)

    async def _failed(self, delivery: _Delivery, exc: Exception) -> None:
        message = delivery.message
        outcome, delay = Outcome.ABANDONED, None
        try:
            policy = await self._current_policy()
            if policy.is_dead(message.read_ct):
                log.error("pgqrs message %s failed %s times, dead-lettered: %r",
                          message.id, message.read_ct, exc)
                if (await self.source.archive([message.id], dead=True))[0]:
                    outcome = Outcome.DEAD_LETTERED
            else:
                backoff = dataclasses.replace(policy, **self.backoff).retry_delay(
                    message.read_ct)
                log.warning("pgqrs message %s failed (attempt %s), retry in %.1fs: %r",
                            message.id, message.read_ct, backoff, exc)
                if await self.source.release([message.id], delay=backoff) == 1:
                    outcome, delay = Outcome.RETRIED, backoff
        except errors.PgqrsError as db_exc:
            # The lease will run out and the message comes back anyway (and the claim
            # itself never delivers it past the queue's threshold).
            log.warning("pgqrs could not release message %s: %s", message.id, db_exc)
        await self._settle([delivery], outcome, error=exc, delay=delay)

    async def _current_policy(self) -> QueuePolicy:
        """The queue's policy, read again on a failure once the last read is a poll old.

        One primary-key lookup on the failure path, shared by the failures of one poll
        interval: a failure storm does not double its statements, and ``update_queue``
        still reaches the loop within a poll interval, without a restart.
        """
        loop = asyncio.get_running_loop()
        async with self._policy_lock:  # concurrent failures wait for one read
            if self._policy is None or loop.time() - self._policy_read >= self.poll:
                started = loop.time()
                self._policy = await self.source.policy()
                self._policy_read = started
            return self._policy

    # -- stopping ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self.in_flight:
            _, pending = await asyncio.wait(list(self.in_flight), timeout=self.grace)
            stopped = [(t, d) for t, d in self.in_flight.items() if t in pending and not d.owner]
            for task, delivery in stopped:
                delivery.owner = "drain"
                task.cancel()
            if pending:  # cancelled handlers end; settling ones finish their statement
                await asyncio.wait(pending)
            await self._release_stopped([d for _, d in stopped])
        try:
            await self.acks.flush()
        finally:
            await self.acks.abandon()

    async def _release_stopped(self, deliveries: list[_Delivery]) -> None:
        """Give back the messages whose handlers were cancelled, visible again at once."""
        reachable = True
        for delivery in deliveries:
            # One statement each, so every message is reported as what really happened
            # (at most ``concurrency`` of them, once, at shutdown).
            released = False
            if reachable:
                try:
                    released = await self.source.release([delivery.message.id]) == 1
                except errors.PgqrsError as exc:
                    log.warning("pgqrs could not release message %s on stop: %s",
                                delivery.message.id, exc)
                    reachable = False
            await self._settle([delivery], Outcome.RELEASED if released else Outcome.ABANDONED)

    # -- the one place every outcome passes through ----------------------------------------

    async def _settle(self, deliveries: list[_Delivery], outcome: Outcome, *,
                      error: BaseException | None = None, delay: float | None = None) -> None:
        """Count settled deliveries and tell the ``on_settled`` hook; never raises.

        Called once the database recorded ``outcome`` (or the loop gave up on recording
        one), with one delivery, or with the batch one archive statement acknowledged.
        """
        if outcome is Outcome.SUCCEEDED:
            self.succeeded += len(deliveries)
        if self.on_settled is None:
            return
        for delivery in deliveries:
            event = Settled(delivery.message, outcome, delivery.duration, error, delay)
            try:
                result = self.on_settled(event)
                if result is not None:
                    await result
            except Exception:
                log.exception("pgqrs on_settled hook failed for message %s (%s); the loop "
                              "carries on", delivery.message.id, outcome)
