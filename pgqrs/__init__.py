"""pgqrs: a durable message queue that lives in PostgreSQL, on SQLAlchemy 2 and Alembic."""

from __future__ import annotations

import logging

from pgqrs._schedule import ScheduleInfo
from pgqrs.admin import Admin
from pgqrs.config import Config
from pgqrs.consumer import Consumer
from pgqrs.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    PgqrsError,
    QueueAlreadyExistsError,
    QueueInUseError,
    QueueNotFoundError,
    SchemaError,
    SchemaNotInstalledError,
    SchemaVersionMismatchError,
    StateError,
    ValidationError,
    WorkerAlreadyExistsError,
    WorkerNotFoundError,
)
from pgqrs.maintenance import Maintenance, MaintenanceReport
from pgqrs.producer import Producer
from pgqrs.settings import Settings
from pgqrs.types import (
    ArchivedMessage,
    NewMessage,
    Outcome,
    QueueInfo,
    QueueMessage,
    QueueMetrics,
    QueuePolicy,
    Settled,
    SystemStats,
    WorkerHealthStats,
    WorkerInfo,
    WorkerStatus,
)

__version__ = "0.1.0"

# A library logs; the application decides where it goes (no "last resort" stderr output).
logging.getLogger("pgqrs").addHandler(logging.NullHandler())

__all__ = [
    "Admin",
    "ArchivedMessage",
    "Config",
    "ConfigurationError",
    "Consumer",
    "DatabaseError",
    "DatabaseUnavailableError",
    "Maintenance",
    "MaintenanceReport",
    "NewMessage",
    "Outcome",
    "PgqrsError",
    "Producer",
    "QueueAlreadyExistsError",
    "QueueInUseError",
    "QueueInfo",
    "QueueMessage",
    "QueueMetrics",
    "QueueNotFoundError",
    "QueuePolicy",
    "ScheduleInfo",
    "SchemaError",
    "SchemaNotInstalledError",
    "SchemaVersionMismatchError",
    "Settings",
    "Settled",
    "StateError",
    "SystemStats",
    "ValidationError",
    "WorkerAlreadyExistsError",
    "WorkerHealthStats",
    "WorkerInfo",
    "WorkerNotFoundError",
    "WorkerStatus",
    "__version__",
]
