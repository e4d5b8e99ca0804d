"""Which delivery of each message a consumer holds: the fence of acks by bare id.

A message's ``read_ct`` numbers its deliveries (a redelivery increments it), so
``(id, read_ct)`` names one delivery. Acks, extensions and releases are fenced by it as
well as by the worker: when a worker's identity was taken over (its heartbeat went stale
and another process registered as the same hostname and port), the old process still has
the worker id, but no longer the delivery, and its late ack changes nothing. Calls that
pass a ``QueueMessage`` carry their delivery; calls with a bare id use the one remembered
here at the claim.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pgqrs.types import QueueMessage

MAX_REMEMBERED = 100_000
"""Deliveries remembered per consumer; past it the oldest claims are forgotten."""


class Receipt(NamedTuple):
    """One delivery of a message."""

    read_ct: int
    """The message's ``read_ct`` at the claim."""
    grouped: bool
    """Whether the message is in an ordered group (it then leaves in a transaction)."""


class Deliveries:
    """The deliveries a consumer claimed and has not settled, by message id.

    Bounded: past ``limit`` the oldest claims are forgotten (their leases ran out long
    ago; an ack by id of one answers False, and the message is delivered again).
    """

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._held: dict[int, Receipt] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._held)

    def ids(self) -> list[int]:
        """The ids of the remembered deliveries, oldest claim first."""
        return list(self._held)

    def record(self, messages: Iterable[QueueMessage]) -> None:
        """Remember the deliveries just claimed."""
        for message in messages:
            self._held.pop(message.id, None)  # a redelivery moves to the end
            self._held[message.id] = Receipt(message.read_ct, message.group is not None)
        while len(self._held) > self._limit:
            del self._held[next(iter(self._held))]

    def named(self, message: int | QueueMessage) -> tuple[int, Receipt] | None:
        """The delivery a call names: the message's own, or the remembered one of an id."""
        if isinstance(message, QueueMessage):
            return message.id, Receipt(message.read_ct, message.group is not None)
        found = self._held.get(message)
        return None if found is None else (message, found)

    def forget(self, receipts: Sequence[tuple[int, Receipt]]) -> None:
        """Drop settled (or lost) deliveries; a newer delivery of the same id stays."""
        for message_id, receipt in receipts:
            if self._held.get(message_id) == receipt:
                del self._held[message_id]
