"""One repository per table: explicit statements on a lent executor, never a commit."""

from __future__ import annotations

from pgqrs.repositories._base import Executor, Repository
from pgqrs.repositories.archive import ArchiveRepository
from pgqrs.repositories.messages import MessageRepository
from pgqrs.repositories.queues import QueueRepository
from pgqrs.repositories.workers import WorkerRepository

__all__ = [
    "ArchiveRepository",
    "Executor",
    "MessageRepository",
    "QueueRepository",
    "Repository",
    "WorkerRepository",
]
