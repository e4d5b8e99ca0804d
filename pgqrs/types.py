"""Plain, immutable values returned by the pgqrs API."""

from __future__ import annotations

import enum
from dataclasses import dataclass
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
class QueueInfo:
    """A queue as stored in ``pgqrs_queues``."""

    id: int
    queue_name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """A live message (``pgqrs_messages``), as returned by ``Consumer.dequeue``."""

    id: int
    queue_id: int
    payload: dict[str, Any]
    vt: datetime | None
    enqueued_at: datetime
    read_ct: int
    dequeued_at: datetime | None
    producer_worker_id: int | None
    consumer_worker_id: int | None


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
