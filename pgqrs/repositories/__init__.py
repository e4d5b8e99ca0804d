"""One repository per table: explicit statements on a lent executor, never a commit.

Repositories hold nothing but their schema, so clients share them: ``for_schema(schema)``
returns the one bundle of a schema for the whole process.
"""

from __future__ import annotations

import dataclasses
import functools

from pgqrs.repositories._base import Compiled, Executes, Executor, Repository, Statement
from pgqrs.repositories.archive import ArchiveRepository
from pgqrs.repositories.lease import LeaseRepository
from pgqrs.repositories.messages import MessageRepository
from pgqrs.repositories.queues import QueueRepository
from pgqrs.repositories.schedules import ScheduleRepository
from pgqrs.repositories.workers import WorkerRepository

__all__ = [
    "ArchiveRepository",
    "Compiled",
    "Executes",
    "Executor",
    "LeaseRepository",
    "MessageRepository",
    "QueueRepository",
    "Repositories",
    "Repository",
    "ScheduleRepository",
    "Statement",
    "WorkerRepository",
    "for_schema",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Repositories:
    """The repositories of one schema."""

    queues: QueueRepository
    workers: WorkerRepository
    messages: MessageRepository
    archive: ArchiveRepository
    schedules: ScheduleRepository
    lease: LeaseRepository


@functools.cache
def for_schema(schema: str) -> Repositories:
    """The process-wide repositories of ``schema`` (a validated schema name).

    Cached for the life of the process: an application uses a handful of schemas, and a
    bundle is six small objects.
    """
    return Repositories(
        queues=QueueRepository(schema),
        workers=WorkerRepository(schema),
        messages=MessageRepository(schema),
        archive=ArchiveRepository(schema),
        schedules=ScheduleRepository(schema),
        lease=LeaseRepository(schema),
    )
