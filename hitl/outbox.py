"""The transactional outbox: every message hitl sends is first a row, committed with the change that calls
for it — a run's start, a decision's continuation, and the next link of a chain when a step finishes.

Life of a row (``hitl_outbox``):

1. Written in the caller's transaction with ``sent_at`` set (optimistically: the publish follows the commit).
2. Published after commit. If publishing fails (broker down), ``sent_at`` is cleared.
3. ``delivered_at`` is set in the transaction in which the receiving step claims its task id
   (:mod:`hitl.steplog`): from then on the row is done.

The relay (beat every ``HITL_RELAY_INTERVAL`` s, and once when a worker starts) publishes rows that are
unsent after ``HITL_RELAY_GRACE`` s, and re-publishes rows sent but not delivered after
``HITL_REDELIVER_AFTER`` s: a message lost with a crashed process or broker (Redis removes a message from the
queue before kombu records it as unacknowledged, so a broker crash in between loses it). Task ids are
deterministic, so a re-published message that turns out not to be lost is recognised and not run twice.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from approvals.errors import BrokerUnavailable
from approvals.models import OutboxMessage, utcnow
from hitl.broker import ensure_broker
from hitl.canvas import apply_chain
from hitl.db import session_scope
from hitl.settings import get_settings

log = logging.getLogger(__name__)

#: Rows published per relay pass.
RELAY_BATCH = 500
_PUBLISH_ERRORS = (KombuOperationalError, BrokerUnavailable, RedisError, OSError)


def enqueue(session: Session, run_id: str, task_id: str, sigs: list[dict[str, Any]], args: list[Any]) -> OutboxMessage:
    """Add an outbox row to ``session`` (the caller's transaction) and return it, flushed.

    Args:
        session: the transaction that makes the change calling for this message.
        run_id: the run the message belongs to.
        task_id: the deterministic task id of the first signature.
        sigs: signature dicts in run order: the first is sent, the rest ride along as its chain.
        args: positional arguments prepended to the first signature's (a result, a decision).
    """
    row = OutboxMessage(run_id=run_id, task_id=task_id, signature={"tasks": sigs}, args=args, sent_at=utcnow())
    session.add(row)
    session.flush()
    return row


def publish(rows: list[OutboxMessage]) -> int:
    """Publish committed outbox rows now; return how many went out.

    A row that cannot be published (broker down) is marked unsent for the relay; nothing is raised.
    """
    sent = 0
    for i, row in enumerate(rows):
        try:
            ensure_broker()
            apply_chain(row.signature["tasks"], row.args, row.task_id)
        except _PUBLISH_ERRORS as exc:
            log.warning("outbox: %s not sent (%s); the relay sends it when the broker is back", row.task_id, exc)
            unsent = [r.id for r in rows[i:]]  # the broker is down: the rest would fail the same way
            with session_scope() as s:
                s.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_(unsent))
                    .values(sent_at=None, attempts=OutboxMessage.attempts + 1)
                )
            return sent
        sent += 1
    return sent


def mark_delivered(session: Session, task_id: str) -> None:
    """In the receiving step's claim transaction: the message of ``task_id`` arrived."""
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.task_id == task_id, OutboxMessage.delivered_at.is_(None))
        .values(delivered_at=utcnow())
    )


def republish_undelivered(task_id: str) -> int:
    """Publish again the row of ``task_id`` if it was never delivered (used when a duplicate step delivery
    suggests the process that should have published it died)."""
    with session_scope() as s:
        rows = list(
            s.scalars(
                select(OutboxMessage).where(OutboxMessage.task_id == task_id, OutboxMessage.delivered_at.is_(None))
            )
        )
    return publish(rows)


def relay(grace_seconds: float | None = None) -> int:
    """Publish rows unsent for ``grace_seconds`` (default ``HITL_RELAY_GRACE``) and rows sent but undelivered
    for ``HITL_REDELIVER_AFTER`` s; delete delivered rows older than ``HITL_OUTBOX_RETENTION`` s.

    Returns:
        The number of rows published.
    """
    settings = get_settings()
    now = utcnow()
    grace = settings.relay_grace if grace_seconds is None else grace_seconds
    due = or_(
        and_(OutboxMessage.sent_at.is_(None), OutboxMessage.created_at <= now - timedelta(seconds=grace)),
        OutboxMessage.sent_at <= now - timedelta(seconds=settings.redeliver_after),
    )
    with session_scope() as s:
        rows = list(
            s.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.delivered_at.is_(None), due)
                .order_by(OutboxMessage.id)
                .limit(RELAY_BATCH)
            )
        )
        if rows:  # claim them for this pass: a concurrent relay skips them until they are due again
            s.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_([r.id for r in rows]))
                .values(sent_at=now, attempts=OutboxMessage.attempts + 1)
            )
        s.execute(
            delete(OutboxMessage).where(
                OutboxMessage.delivered_at <= now - timedelta(seconds=settings.outbox_retention)
            )
        )
    if rows:
        log.info("outbox relay: publishing %d message(s)", len(rows))
    return publish(rows)


def is_sent(task_id: str) -> bool | None:
    """Whether the outbox row of ``task_id`` was published (None: there is no such row)."""
    with session_scope() as s:
        row = s.execute(select(OutboxMessage.sent_at).where(OutboxMessage.task_id == task_id)).one_or_none()
    return None if row is None else row[0] is not None
