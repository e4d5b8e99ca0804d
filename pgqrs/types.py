"""Plain, immutable values returned by the pgqrs API."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class WorkerStatus(enum.StrEnum):
    """Lifecycle state of a worker (a Producer or Consumer identity).

    ``Ready``, ``Suspended`` and ``Stopped`` (the original binding's names) are aliases:
    ``WorkerStatus.Ready is WorkerStatus.READY``.
    """

    READY = "ready"
    SUSPENDED = "suspended"
    STOPPED = "stopped"
    Ready = "ready"
    Suspended = "suspended"
    Stopped = "stopped"


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """The rules a queue owns (SPEC §12), as stored on its ``pgqrs_queues`` row.

    Durations are in seconds. The defaults are pgqrs's behaviour before queues had a policy.
    """

    max_read_ct: int = 5
    """Deliveries after which a message is a dead letter (never claimed again)."""
    visibility_timeout: float = 30.0
    """Default lease of a claim, in seconds (a consumer's per-call lease overrides it)."""
    retry_backoff_base: float = 1.0
    """First retry delay of the consume loop, in seconds (doubles with every delivery)."""
    retry_backoff_max: float = 300.0
    """Longest retry delay of the consume loop, in seconds."""
    retention: float | None = None
    """Seconds archived and dead-lettered rows are kept; None keeps them forever."""
    paused: bool = False
    """A paused queue accepts enqueues, but no consumer claims from it."""

    def is_dead(self, read_ct: int) -> bool:
        """True if a message delivered ``read_ct`` times has used up its deliveries."""
        return read_ct >= self.max_read_ct

    def retry_delay(self, read_ct: int) -> float:
        """The consume loop's delay before the next delivery, after ``read_ct`` deliveries."""
        return float(min(self.retry_backoff_base * 2 ** max(read_ct - 1, 0),
                         self.retry_backoff_max))


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue as stored in ``pgqrs_queues``: its identity, then its policy.

    The policy fields have the pre-policy defaults, so code that builds a ``QueueInfo``
    from the first three fields keeps working.
    """

    id: int
    queue_name: str
    created_at: datetime
    max_read_ct: int = 5
    """Deliveries after which a message is a dead letter."""
    visibility_timeout: float = 30.0
    """Default lease in seconds."""
    retry_backoff_base: float = 1.0
    """First retry delay of the consume loop, in seconds."""
    retry_backoff_max: float = 300.0
    """Longest retry delay of the consume loop, in seconds."""
    retention: float | None = None
    """Seconds archived rows are kept; None keeps them forever."""
    paused: bool = False
    """True while no consumer may claim from the queue."""

    @property
    def policy(self) -> QueuePolicy:
        """The queue's policy alone."""
        return QueuePolicy(
            max_read_ct=self.max_read_ct, visibility_timeout=self.visibility_timeout,
            retry_backoff_base=self.retry_backoff_base,
            retry_backoff_max=self.retry_backoff_max, retention=self.retention,
            paused=self.paused,
        )


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message of ``Producer.enqueue_batch`` with options of its own (SPEC §13).

    A plain ``dict`` in the same batch is a payload that takes the batch's options. A field
    left ``None`` here takes the batch's value too.

    Example:
        await producer.enqueue_batch([
            NewMessage({"step": 1}, group="order-42", dedup_key="order-42/1"),
            NewMessage({"step": 2}, group="order-42", priority=5),
            {"step": "ungrouped"},
        ])
    """

    payload: dict[str, Any]
    """The JSON object to deliver."""
    priority: int | None = None
    """Higher is claimed first (-32768 to 32767; default 0)."""
    dedup_key: str | None = None
    """While a message with this key is live in the queue, the batch gets that one's id."""
    headers: Mapping[str, str] | None = None
    """A small ``str -> str`` map kept apart from the payload (trace context, tenant)."""
    group: str | None = None
    """Ordered group: delivered in order, one message of the group leased at a time."""
    delay: float | None = None
    """Seconds before the message becomes visible."""


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """A live message (``pgqrs_messages``), as returned by ``Consumer.dequeue``.

    ``read_ct`` numbers the delivery: acknowledging, extending or releasing this object (or
    its id, with the consumer that claimed it) acts on this delivery only. Once the message
    was delivered again (its lease ran out), the call answers ``False``.
    """

    id: int
    queue_id: int
    payload: dict[str, Any]
    vt: datetime | None
    enqueued_at: datetime
    read_ct: int
    dequeued_at: datetime | None
    producer_worker_id: int | None
    consumer_worker_id: int | None
    priority: int = 0
    """Higher is claimed first."""
    headers: dict[str, str] = field(default_factory=dict)
    """The headers given at enqueue (empty if none)."""
    dedup_key: str | None = None
    """The deduplication key given at enqueue, if any."""
    group: str | None = None
    """The ordered group, if any."""


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """A message moved to ``pgqrs_archive``: processed, or a dead letter."""

    id: int
    original_msg_id: int
    queue_id: int
    payload: dict[str, Any]
    enqueued_at: datetime
    vt: datetime | None
    read_ct: int
    archived_at: datetime
    dequeued_at: datetime | None
    producer_worker_id: int | None
    consumer_worker_id: int | None
    dead_letter: bool
    priority: int = 0
    """The priority it was enqueued with."""
    headers: dict[str, str] = field(default_factory=dict)
    """The headers it was enqueued with (empty if none)."""
    dedup_key: str | None = None
    """Its deduplication key, if any (free again: only live messages hold a key)."""
    group: str | None = None
    """Its ordered group, if any."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker row (``pgqrs_workers``)."""

    id: int
    hostname: str
    port: int
    queue_id: int | None
    started_at: datetime
    heartbeat_at: datetime
    shutdown_at: datetime | None
    status: WorkerStatus


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """Message counts of one queue, taken in one snapshot."""

    queue_name: str
    total_messages: int
    pending_messages: int
    leased_messages: int
    delayed_messages: int
    dead_messages: int
    archived_messages: int
    oldest_pending_age_seconds: float | None
    newest_message_at: datetime | None


@dataclass(frozen=True, slots=True)
class SystemStats:
    """Whole-installation counters."""

    total_queues: int
    total_workers: int
    workers_by_status: dict[str, int]
    total_messages: int
    archived_messages: int
    schema_revision: str | None


@dataclass(frozen=True, slots=True)
class WorkerHealthStats:
    """Worker counts by status, and how many live ones have a stale heartbeat."""

    queue_name: str | None
    total_workers: int
    ready_workers: int
    suspended_workers: int
    stopped_workers: int
    stale_workers: int


class Outcome(enum.StrEnum):
    """How the consume loop settled one delivery of a message (``Settled.outcome``)."""

    SUCCEEDED = "succeeded"
    """The handler returned and the message is in the archive."""
    RETRIED = "retried"
    """The handler raised; the message is back in the queue, visible after ``delay``."""
    DEAD_LETTERED = "dead_lettered"
    """The handler raised on the last allowed delivery; archived as a dead letter."""
    RELEASED = "released"
    """The loop stopped before the handler finished; the message is visible again at once."""
    ABANDONED = "abandoned"
    """No outcome could be written: the consumer no longer held the message (its lease ran
    out) or the database stayed out of reach. The message is delivered again when its lease
    ends (at least once, never lost)."""


@dataclass(frozen=True, slots=True)
class Settled:
    """One delivery settled by ``Consumer.consume``, as passed to its ``on_settled`` hook.

    A delivery is settled once the database has recorded its outcome (the archive, dead
    letter or release statement committed), or once the loop gave up on recording one
    (``Outcome.ABANDONED``). Every delivery the loop claims is settled exactly once.
    """

    message: QueueMessage
    """The message as claimed (``message.read_ct`` is this delivery's number)."""
    outcome: Outcome
    """What happened to it."""
    duration: float | None
    """Seconds the handler ran (until it returned, raised or was cancelled); None if it
    never started."""
    error: BaseException | None = None
    """What the handler raised (retried, dead-lettered, and abandoned after a failure);
    None when it returned or never ran."""
    delay: float | None = None
    """For ``RETRIED``: seconds until the message is visible again; None otherwise."""
