"""Rows to values: ``to_message`` builds what the ``QueueMessage`` constructor builds."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgqrs import QueueMessage
from pgqrs.repositories.messages import to_message

_NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7, "queue_id": 2, "payload": {"order": 42, "items": [1, 2]},
        "vt": _NOW + timedelta(seconds=30), "enqueued_at": _NOW - timedelta(seconds=1),
        "read_ct": 3, "dequeued_at": _NOW, "producer_worker_id": 11,
        "consumer_worker_id": 12, "priority": -4, "headers": {"traceparent": "00-ab"},
        "dedup_key": "order-42", "group_key": "customer-9",
    }
    row.update(changes)
    return row


def _constructed(row: dict[str, Any]) -> QueueMessage:
    """What the public constructor makes of the same row."""
    def decoded(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value
    return QueueMessage(
        id=row["id"], queue_id=row["queue_id"], payload=decoded(row["payload"]),
        vt=row["vt"], enqueued_at=row["enqueued_at"], read_ct=row["read_ct"],
        dequeued_at=row["dequeued_at"], producer_worker_id=row["producer_worker_id"],
        consumer_worker_id=row["consumer_worker_id"], priority=row["priority"],
        headers={} if row["headers"] is None else dict(decoded(row["headers"])),
        dedup_key=row["dedup_key"], group=row["group_key"],
    )


@pytest.mark.parametrize("row", [
    _row(),
    _row(headers=None, dedup_key=None, group_key=None, vt=None, dequeued_at=None,
         producer_worker_id=None, consumer_worker_id=None, priority=0),
    _row(payload='{"as": "text"}', headers='{"k": "v"}'),  # drivers without a jsonb codec
], ids=["every option", "nothing optional", "json as text"])
def test_to_message_is_the_constructors_message(row: dict[str, Any]) -> None:
    message, expected = to_message(row), _constructed(row)
    # Every field is set (an unset slot raises AttributeError), and to the same value.
    for field in dataclasses.fields(QueueMessage):
        assert getattr(message, field.name) == getattr(expected, field.name), field.name
    assert message == expected and repr(message) == repr(expected)
    assert type(message) is QueueMessage


def test_a_built_message_behaves_as_a_constructed_one() -> None:
    message = to_message(_row())
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.read_ct = 9  # type: ignore[misc]
    assert dataclasses.replace(message, read_ct=4) == dataclasses.replace(
        _constructed(_row()), read_ct=4)
    assert pickle.loads(pickle.dumps(message)) == message
    assert copy.deepcopy(message) == message
    assert dataclasses.asdict(message)["group"] == "customer-9"
    assert to_message(_row(headers=None)).headers == {}
