"""The one definition of a live message's state: pending, leased, delayed or dead.

``Admin.queue_metrics`` (``MessageRepository.metrics``), the CLI (through ``Admin``), the
Prometheus collector (``pgqrs.prometheus._query``, which renders these expressions into
its single scrape statement) and the dashboard (its per-message state and state filter)
all classify messages with the expressions below, so a message is in the same state
whoever counts it.

- visible: ``vt`` has passed and the message is not parked behind its group's head;
- pending: visible, with deliveries left (``read_ct < max_read_ct``): claimable now;
- dead: visible, deliveries used up: waiting for ``Admin.dlq()``;
- leased: not visible, held by a consumer;
- delayed: not visible, held by nobody (a delayed enqueue, a retry's backoff, or a
  grouped message parked behind its group's head: it waits as a delayed one does).

``max_read_ct`` is the queue's own threshold: a column of ``pgqrs_queues`` joined in, or
a bound parameter holding it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, case, func

STATES = ("pending", "leased", "delayed", "dead")
"""Every state of a live message, in the order pages and metrics list them."""

_NOW = func.now()


def conditions(m: Any, max_read_ct: Any) -> dict[str, ColumnElement[bool]]:
    """Each state's condition on the messages table (or alias) ``m``."""
    visible = and_(m.c.vt <= _NOW, ~m.c.parked)
    exhausted = m.c.read_ct >= max_read_ct
    return {
        "pending": and_(visible, ~exhausted),
        "leased": and_(~visible, m.c.consumer_worker_id.is_not(None)),
        "delayed": and_(~visible, m.c.consumer_worker_id.is_(None)),
        "dead": and_(visible, exhausted),
    }


def counts(m: Any, max_read_ct: Any) -> list[ColumnElement[Any]]:
    """Aggregates over ``m``: a count per state, then the oldest pending ``vt``."""
    where = conditions(m, max_read_ct)
    return [*(func.count().filter(where[state]).label(state) for state in STATES),
            func.min(m.c.vt).filter(where["pending"]).label("oldest_pending")]


def state(m: Any, max_read_ct: Any) -> ColumnElement[str]:
    """A message's state as a string (the same conditions, as one ``CASE``)."""
    where = conditions(m, max_read_ct)
    return case(*((where[s], s) for s in STATES[:-1]), else_="dead")
