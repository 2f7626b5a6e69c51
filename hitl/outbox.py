"""The transactional outbox: messages written with the state change that calls for them, sent after commit.

A start or a decision commits its outbox row in the same transaction as the row changes; only then is the
message published. If publishing fails (broker down, process killed), the row stays unsent and the relay
(beat every ``HITL_RELAY_INTERVAL`` seconds, and once when a worker starts) sends it later.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from approvals.errors import BrokerUnavailable
from approvals.models import OutboxMessage, utcnow
from hitl.broker import ensure_broker
from hitl.canvas import apply_chain
from hitl.db import session_scope
from hitl.settings import get_settings

log = logging.getLogger(__name__)

#: Rows sent per relay pass.
RELAY_BATCH = 500


def enqueue(session: Session, run_id: str, task_id: str, sigs: list[dict[str, Any]], args: list[Any]) -> OutboxMessage:
    """Add an outbox row to ``session`` (the caller's transaction); returns it, flushed (its id is set)."""
    row = OutboxMessage(run_id=run_id, task_id=task_id, signature={"tasks": sigs}, args=args)
    session.add(row)
    session.flush()
    return row


def dispatch(ids: list[int]) -> int:
    """Publish the unsent outbox rows ``ids`` and mark them sent; return how many were sent.

    A row that cannot be published stays unsent for the relay; nothing is raised for it.
    """
    if not ids:
        return 0
    with session_scope() as s:
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(ids), OutboxMessage.sent_at.is_(None))))
    sent = 0
    for row in rows:
        try:
            ensure_broker()
            apply_chain(row.signature["tasks"], row.args, row.task_id)
        except (KombuOperationalError, BrokerUnavailable, RedisError, OSError) as exc:
            log.warning("outbox row %s (%s) not sent, the relay will retry: %s", row.id, row.task_id, exc)
            with session_scope() as s:
                s.execute(
                    update(OutboxMessage).where(OutboxMessage.id == row.id).values(attempts=OutboxMessage.attempts + 1)
                )
            break  # the broker is down: the rest would fail the same way
        with session_scope() as s:
            s.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id, OutboxMessage.sent_at.is_(None))
                .values(sent_at=utcnow(), attempts=OutboxMessage.attempts + 1)
            )
        sent += 1
    return sent


def relay(grace_seconds: float | None = None) -> int:
    """Send outbox rows left unsent for longer than ``grace_seconds`` (default ``HITL_RELAY_GRACE``).

    Returns:
        The number of rows sent.
    """
    grace = get_settings().relay_grace if grace_seconds is None else grace_seconds
    cutoff = utcnow() - timedelta(seconds=grace)
    with session_scope() as s:
        ids = list(
            s.scalars(
                select(OutboxMessage.id)
                .where(OutboxMessage.sent_at.is_(None), OutboxMessage.created_at <= cutoff)
                .order_by(OutboxMessage.id)
                .limit(RELAY_BATCH)
            )
        )
    return dispatch(ids)


def is_queued(session: Session, task_id: str) -> bool:
    """Whether an outbox row for ``task_id`` exists (sent or not), in the caller's transaction."""
    return session.scalar(select(OutboxMessage.id).where(OutboxMessage.task_id == task_id)) is not None


def is_sent(task_id: str) -> bool | None:
    """Whether the outbox row of ``task_id`` was sent (None: there is no such row)."""
    with session_scope() as s:
        row = s.execute(select(OutboxMessage.sent_at).where(OutboxMessage.task_id == task_id)).one_or_none()
    return None if row is None else row[0] is not None


def unsent_count() -> int:
    """Return how many outbox rows are not sent yet."""
    from sqlalchemy import func

    with session_scope() as s:
        return int(
            s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None))) or 0
        )
