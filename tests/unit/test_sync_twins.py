"""The sync facade is derived from the async clients: every public method has a twin.

A coroutine method added to an async client without a sync twin (or with another
signature) fails here, so the two faces cannot drift apart.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import pgqrs
import pgqrs.sync
from pgqrs import _accessors

PAIRS = [
    (pgqrs.Admin, pgqrs.sync.Admin),
    (pgqrs.Producer, pgqrs.sync.Producer),
    (_accessors.Queues, pgqrs.sync.Queues),
    (_accessors.Workers, pgqrs.sync.Workers),
    (_accessors.Messages, pgqrs.sync.Messages),
    (_accessors.Archive, pgqrs.sync.Archive),
]


def _shape(function: Any) -> list[tuple[str, Any, Any]]:
    """Parameter names, kinds and defaults: what a caller sees, annotations aside."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def differences(async_cls: type, sync_cls: type) -> list[str]:
    """What the sync class lacks, or has in another shape, compared with the async one."""
    found = []
    for name, member in inspect.getmembers(async_cls):
        if name.startswith("_"):
            continue
        static = inspect.getattr_static(async_cls, name)
        twin = inspect.getattr_static(sync_cls, name, None)
        if isinstance(static, property):
            if not isinstance(twin, property):
                found.append(f"{name}: no sync property")
        elif inspect.isfunction(member):
            if twin is None:
                found.append(f"{name}: no sync twin")
            elif inspect.iscoroutinefunction(twin) or not inspect.isfunction(twin):
                found.append(f"{name}: the twin is not a plain method")
            elif _shape(twin) != _shape(member):
                found.append(f"{name}: {inspect.signature(twin)} != {inspect.signature(member)}")
    return found


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=lambda c: c.__qualname__)
def test_every_public_method_has_a_sync_twin(async_cls: type, sync_cls: type) -> None:
    assert differences(async_cls, sync_cls) == []


def test_a_new_async_feature_without_a_twin_is_reported() -> None:
    class Grown(pgqrs.Producer):
        async def enqueue_later(self, payload: dict[str, Any]) -> int:
            return 0

        async def enqueue(self, payload: dict[str, Any], *, priority: int = 0) -> int:
            return 0

    found = differences(Grown, pgqrs.sync.Producer)
    assert "enqueue_later: no sync twin" in found
    assert any(item.startswith("enqueue:") for item in found)


def test_sync_methods_are_not_coroutines() -> None:
    for _, sync_cls in PAIRS:
        for name, member in inspect.getmembers(sync_cls, inspect.isfunction):
            assert not inspect.iscoroutinefunction(member), name


def test_the_sync_face_rejects_wrong_engines() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    with pytest.raises(pgqrs.ConfigurationError, match="synchronous SQLAlchemy Engine"):
        pgqrs.sync.Admin(create_async_engine("postgresql+asyncpg://localhost/x"))  # type: ignore[arg-type]
    with pytest.raises(pgqrs.ConfigurationError, match="PostgreSQL"):
        pgqrs.sync.Producer(create_engine("sqlite://"), "q", "h", 1)
