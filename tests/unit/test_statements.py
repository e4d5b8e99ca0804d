"""The fast path's statement type: module-level only, compiled once per schema."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from pgqrs import Admin, Consumer, Producer, repositories
from pgqrs.repositories import Statement, archive, messages, workers


def _module_statements() -> list[Statement]:
    return [value for module in (messages, workers, archive) for value in vars(module).values()
            if isinstance(value, Statement)]


def test_a_statement_cannot_be_built_per_call() -> None:
    with pytest.raises(TypeError, match="module level"):
        Statement(select(1))


def test_the_hot_path_statements_are_declared_as_statements() -> None:
    names = {name for module in (messages, workers, archive)
             for name, value in vars(module).items() if isinstance(value, Statement)}
    assert {"_ENQUEUE", "_ENQUEUE_BATCH", "_DEQUEUE", "_ARCHIVE", "_DELETE", "_EXTEND",
            "_RELEASE", "_HEARTBEAT", "_REPLAY"} <= names


def test_compiled_once_per_schema_with_the_schema_rendered() -> None:
    dialect = postgresql.asyncpg.dialect()
    statement = messages._ENQUEUE
    jobs = statement.compile("jobs", dialect)
    assert statement.compile("jobs", dialect) is jobs
    assert "jobs.pgqrs_messages" in jobs.sql and "$1" in jobs.sql
    assert "p_payload" in jobs.names
    assert statement.compile("public", dialect).sql != jobs.sql
    for each in _module_statements():  # every one of them compiles
        assert each.compile("jobs", dialect).sql


def test_clients_share_one_bundle_per_schema() -> None:
    dsn = "postgresql://localhost/unused"  # construction does no I/O
    producer, consumer = Producer(dsn, "q", "h", 1), Consumer(dsn, "q", "h", 2)
    admin, other = Admin(dsn), Admin(dsn, schema="jobs")
    assert producer._messages is consumer._messages is admin._messages
    assert producer._workers is admin._workers and producer._queues is admin._queues
    assert repositories.for_schema("public").archive is admin._archive
    assert other._messages is not admin._messages
    assert other._messages.schema == "jobs"
