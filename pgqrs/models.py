"""SQLAlchemy declarative models of the pgqrs tables.

They live on pgqrs's own ``MetaData`` (never the host application's) with ``schema=None``;
pgqrs maps ``None`` to the configured schema on every statement
(``schema_translate_map``), so the same models serve any schema.

The models describe the schema; Alembic revisions in ``pgqrs/migrations/versions`` create
it, and ``alembic check`` keeps the two in agreement.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Interval,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgqrs.types import WorkerStatus

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

QUEUE_NAME_MAX_LENGTH = 255
SCHEDULE_NAME_MAX_LENGTH = 255


class PgqrsBase(DeclarativeBase):
    """Declarative base of the pgqrs tables, with its own naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_TIMESTAMP = DateTime(timezone=True)

worker_status_enum = Enum(
    WorkerStatus,
    name="worker_status",
    values_callable=lambda members: [m.value for m in members],
)


class Queue(PgqrsBase):
    """A named queue and its policy (SPEC §12): the rules every client follows.

    The server defaults reproduce pgqrs's behaviour before queues had a policy, so rows
    written by older code (or revision ``pgqrs_0001``) read as they always behaved.
    """

    __tablename__ = "pgqrs_queues"
    __table_args__ = (
        CheckConstraint("max_read_ct >= 1", name="max_read_ct_positive"),
        CheckConstraint("visibility_timeout > interval '0'",
                        name="visibility_timeout_positive"),
        CheckConstraint("retry_backoff_base >= interval '0'",
                        name="retry_backoff_base_not_negative"),
        CheckConstraint("retry_backoff_max >= retry_backoff_base",
                        name="retry_backoff_max_not_below_base"),
        CheckConstraint("retention IS NULL OR retention > interval '0'",
                        name="retention_positive"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    queue_name: Mapped[str] = mapped_column(
        String(QUEUE_NAME_MAX_LENGTH), unique=True, nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(
        _TIMESTAMP, nullable=False, server_default=func.now()
    )
    max_read_ct: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("5"))
    visibility_timeout: Mapped[timedelta] = mapped_column(
        Interval, nullable=False, server_default=text("'00:00:30'::interval")
    )
    retry_backoff_base: Mapped[timedelta] = mapped_column(
        Interval, nullable=False, server_default=text("'00:00:01'::interval")
    )
    retry_backoff_max: Mapped[timedelta] = mapped_column(
        Interval, nullable=False, server_default=text("'00:05:00'::interval")
    )
    retention: Mapped[timedelta | None] = mapped_column(Interval, nullable=True)
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))


class Worker(PgqrsBase):
    """A Producer or Consumer identity, ``(hostname, port)``; no queue means an admin."""

    __tablename__ = "pgqrs_workers"
    __table_args__ = (
        UniqueConstraint("hostname", "port"),
        Index(None, "queue_id", "status"),
        Index(None, "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    hostname: Mapped[str] = mapped_column(Text, nullable=False)
    port: Mapped[int] = mapped_column(Integer, nullable=False)
    queue_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("pgqrs_queues.id", ondelete="CASCADE"), nullable=True
    )
    started_at: Mapped[datetime] = mapped_column(
        _TIMESTAMP, nullable=False, server_default=func.now()
    )
    heartbeat_at: Mapped[datetime] = mapped_column(
        _TIMESTAMP, nullable=False, server_default=func.now()
    )
    shutdown_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP, nullable=True)
    status: Mapped[WorkerStatus] = mapped_column(
        worker_status_enum, nullable=False, server_default=text("'ready'")
    )


class Message(PgqrsBase):
    """A live message; ``vt`` is when it becomes (or became) claimable.

    Options (SPEC §13): ``priority`` (higher first), ``dedup_key`` (at most one live message
    per key and queue), ``headers`` (a small str→str map) and ``group_key`` (an ordered
    group). Of a group's live messages only the head (the oldest) is claimable; the others
    are ``parked`` and stay out of the claim index until the head leaves (see
    ``pgqrs.repositories._groups``).

    No foreign keys, and of the worker columns only the held rows indexed (revision
    ``pgqrs_0005``): they cost every enqueue and every claim. What guarantees the
    references instead is in docs/reliability.md: enqueues lock their queue row once
    per statement (``pgqrs.repositories._groups.locked_queue``), deleting workers clears
    their ids from live messages (``pgqrs.repositories.workers``), and worker ids come from
    an identity, never reused.
    """

    __tablename__ = "pgqrs_messages"
    __table_args__ = (
        # Lists and the dashboard page through a queue by id.
        Index(None, "queue_id", "id"),
        # The messages a worker holds (its release, held counts, a takeover): only held
        # rows are in it, so an enqueue writes no entry and a claim one.
        Index("ix_pgqrs_messages_held", "consumer_worker_id",
              postgresql_where=text("consumer_worker_id IS NOT NULL")),
        # The claim: per priority level, the oldest visible first. Delayed and leased rows
        # (vt in the future) sort after every visible row of their level, so a claim never
        # walks them; parked rows are not in it at all.
        Index("ix_pgqrs_messages_claim", "queue_id", text("priority DESC"), "vt", "id",
              postgresql_where=text("NOT parked")),
        # Deduplication: one live message per key and queue (archiving frees the key).
        Index("uq_pgqrs_messages_dedup_key", "queue_id", "dedup_key", unique=True,
              postgresql_where=text("dedup_key IS NOT NULL")),
        # The queue behind each group head: the next one to unpark is the lowest id.
        Index("ix_pgqrs_messages_parked", "queue_id", "group_key", "id",
              postgresql_where=text("parked")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    queue_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    vt: Mapped[datetime] = mapped_column(_TIMESTAMP, nullable=False, server_default=func.now())
    enqueued_at: Mapped[datetime] = mapped_column(
        _TIMESTAMP, nullable=False, server_default=func.now()
    )
    read_ct: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    dequeued_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP, nullable=True)
    producer_worker_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    consumer_worker_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False,
                                          server_default=text("0"))
    parked: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    dedup_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    group_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB, nullable=True)


class Group(PgqrsBase):
    """An ordered group: its lock, how many live messages it has, whether it needs a head.

    Every enqueue into the group and every removal of one of its messages updates this
    row, which is what keeps "one head per group" true across processes (see
    ``pgqrs.repositories._groups``). A row left at ``live = 0`` is deleted a little later.
    """

    __tablename__ = "pgqrs_groups"
    __table_args__ = (
        PrimaryKeyConstraint("queue_id", "group_key"),
        # The claim heals groups whose head left without a successor in sight.
        Index("ix_pgqrs_groups_needs_head", "queue_id", postgresql_where=text("needs_head")),
        # Acks delete rows of groups that emptied.
        Index("ix_pgqrs_groups_empty", "queue_id", postgresql_where=text("live = 0")),
    )

    queue_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pgqrs_queues.id", ondelete="CASCADE"), nullable=False
    )
    group_key: Mapped[str] = mapped_column(Text, nullable=False)
    live: Mapped[int] = mapped_column(Integer, nullable=False)
    needs_head: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                             server_default=text("false"))


class Archive(PgqrsBase):
    """A message that left the live queue: processed, or a dead letter.

    No foreign keys: the archive is history and outlives workers. Two secondary indexes,
    each for a query that must not scan (revision ``pgqrs_0005`` dropped the other three:
    every acknowledgement wrote an entry in each).
    """

    __tablename__ = "pgqrs_archive"
    __table_args__ = (
        # Pages of a queue's archive, and the retention purge's batches.
        Index(None, "queue_id", "id"),
        # The dashboard's throughput chart: the last minutes only.
        Index(None, "archived_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    original_msg_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    queue_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    enqueued_at: Mapped[datetime] = mapped_column(_TIMESTAMP, nullable=False)
    vt: Mapped[datetime | None] = mapped_column(_TIMESTAMP, nullable=True)
    read_ct: Mapped[int] = mapped_column(Integer, nullable=False)
    archived_at: Mapped[datetime] = mapped_column(
        _TIMESTAMP, nullable=False, server_default=func.now()
    )
    dequeued_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP, nullable=True)
    producer_worker_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    consumer_worker_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    dead_letter: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False,
                                          server_default=text("0"))
    dedup_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    group_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB, nullable=True)



class Schedule(PgqrsBase):
    """A recurring message: enqueued on ``queue_id`` at every tick of ``cron``.

    ``next_run`` is the next tick not yet enqueued; the maintenance runner moves it forward
    with a compare-and-set in the transaction that enqueues the tick, so a tick is enqueued
    exactly once however many runners there are.
    """

    __tablename__ = "pgqrs_schedules"
    __table_args__ = (
        UniqueConstraint("name"),
        Index(None, "next_run"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    name: Mapped[str] = mapped_column(String(SCHEDULE_NAME_MAX_LENGTH), nullable=False)
    queue_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pgqrs_queues.id", ondelete="CASCADE"), nullable=False
    )
    cron: Mapped[str] = mapped_column(Text, nullable=False)
    timezone: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'UTC'"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB, nullable=True)
    catch_up: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    next_run: Mapped[datetime] = mapped_column(_TIMESTAMP, nullable=False)
    last_run_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP, nullable=True)
    last_message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        _TIMESTAMP, nullable=False, server_default=func.now()
    )


class MaintenanceLease(PgqrsBase):
    """The one row saying which maintenance runner may act, and until when.

    Every action of the runner starts with an ``UPDATE`` of this row that checks it still
    holds the lease (and extends it): the row lock that ``UPDATE`` takes lasts until the
    action commits, so two actions never overlap, and a runner whose lease ran out acts no
    more.
    """

    __tablename__ = "pgqrs_maintenance"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str | None] = mapped_column(Text, nullable=True)
    acquired_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP, nullable=True)
    lease_until: Mapped[datetime] = mapped_column(
        _TIMESTAMP, nullable=False, server_default=text("'-infinity'")
    )
    last_round_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP, nullable=True)


queues_table = cast(Table, Queue.__table__)
workers_table = cast(Table, Worker.__table__)
messages_table = cast(Table, Message.__table__)
archive_table = cast(Table, Archive.__table__)
schedules_table = cast(Table, Schedule.__table__)
maintenance_table = cast(Table, MaintenanceLease.__table__)
groups_table = cast(Table, Group.__table__)

__all__ = [
    "NAMING_CONVENTION",
    "Archive",
    "Group",
    "MaintenanceLease",
    "Message",
    "PgqrsBase",
    "Queue",
    "Schedule",
    "Worker",
    "archive_table",
    "groups_table",
    "maintenance_table",
    "messages_table",
    "queues_table",
    "schedules_table",
    "workers_table",
]
