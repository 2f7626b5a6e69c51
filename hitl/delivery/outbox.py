"""The transactional outbox: every message hitl sends is first a row, committed with the change that calls
for it — a run's start, a decision's continuation, and the next link of a chain when a step finishes.

Life of a row (``hitl_outbox``):

1. Written in the caller's transaction with ``sent_at`` set (optimistically: the publish follows the commit).
2. Published after commit. If publishing fails (broker down), ``sent_at`` is cleared (``attempts``, the
   re-send count, is not raised: the backoff below counts re-sends of sent rows only).
3. ``delivered_at`` is set when the message's first task has run: in the transaction in which a journaled step
   finishes (or is skipped), earlier by the step watcher when the step runs long (:mod:`hitl.delivery.steplog`), or, for
   a plain task, by its worker process's batched receipts (:mod:`hitl.worker.signals`). From then on the row is done.

The relay (beat every ``HITL_RELAY_INTERVAL`` s, and once when a worker starts) publishes rows that are
unsent after ``HITL_RELAY_GRACE`` s, and re-publishes rows sent but not delivered after
``HITL_REDELIVER_AFTER`` s (then 2, 4, ... 32 times that after each re-send): a message lost with a crashed
process or broker (Redis removes a message from the queue before kombu records it as unacknowledged, so a
broker crash in between loses it). Task ids are
deterministic, so a re-published message that turns out not to be lost is recognised and not run twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import datetime, timedelta
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from approvals import tables
from approvals.errors import BrokerUnavailable
from approvals.models import OutboxMessage, utcnow
from approvals.status import RunStatus
from approvals.transitions import end_run
from hitl.delivery.canvas import apply_canvas
from hitl.infra.broker import ensure_broker
from hitl.infra.db import read_session, session_scope
from hitl.infra.settings import get_settings

log = logging.getLogger(__name__)

#: Rows published per relay pass.
RELAY_BATCH = 500
#: The outbox table, for Core statements (no ORM bookkeeping on the hot path).
_TABLE = tables.outbox
_INSERT = insert(_TABLE)
_MARK_DELIVERED = (
    update(_TABLE)
    .where(_TABLE.c.task_id.in_(bindparam("b_task_ids", expanding=True)), _TABLE.c.delivered_at.is_(None))
    .values(delivered_at=bindparam("b_now", type_=_TABLE.c.delivered_at.type))
)
#: What a publish raises when the broker cannot be reached.
PUBLISH_ERRORS = (KombuOperationalError, BrokerUnavailable, RedisError, OSError)
_PUBLISH_ERRORS = PUBLISH_ERRORS


def enqueue(session: Session, run_id: str, task_id: str, sigs: list[dict[str, Any]], args: list[Any]) -> OutboxMessage:
    """Insert an outbox row in ``session`` (the caller's transaction) and return it.

    Args:
        session: the transaction that makes the change calling for this message.
        run_id: the run the message belongs to.
        task_id: the deterministic task id of the first signature.
        sigs: signature dicts in run order: the first is sent, the rest ride along as its chain.
        args: positional arguments prepended to the first signature's (a result, a decision).

    Returns:
        The row as written, for :func:`publish` after commit. It is not attached to the session and its
        ``id`` is not read back (one INSERT, no round trip for it): rows are identified by ``task_id``.
    """
    return enqueue_many(session, [(run_id, task_id, sigs, args)])[0]


def enqueue_many(
    session: Session, messages: list[tuple[str, str, list[dict[str, Any]], list[Any]]]
) -> list[OutboxMessage]:
    """Insert outbox rows ``(run_id, task_id, sigs, args)`` with one statement; see :func:`enqueue`."""
    if not messages:
        return []
    now = utcnow()
    rows = [new_row(r, t, s, a, now) for r, t, s, a in messages]
    session.flush()  # what the caller added (its run, say) goes first: the outbox row refers to it
    insert_rows(session, rows)
    return [OutboxMessage(**row) for row in rows]


def insert_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert outbox rows made by :func:`new_row`, with one Core statement (no ORM flush)."""
    session.execute(_INSERT, rows)


def new_row(run_id: str, task_id: str, sigs: list[dict[str, Any]], args: list[Any], now: datetime) -> dict[str, Any]:
    """The column values of a new outbox row (see :func:`enqueue`), sent optimistically at ``now``."""
    return {
        "run_id": run_id,
        "task_id": task_id,
        "signature": {"tasks": sigs},
        "args": args,
        "created_at": now,
        "sent_at": now,
        "attempts": 0,
    }


class Unbuildable(Exception):
    """A message that cannot be built (Celery refused its arguments, say); raised by :func:`publish` with
    ``strict=True``, from the original error."""


def publish(rows: list[OutboxMessage], *, strict: bool = False) -> int:
    """Publish committed outbox rows now, on one broker connection; return how many went out.

    A row that cannot be published (broker down) is marked unsent for the relay; nothing is raised. A row whose
    message cannot be built fails its run (``strict=True``: raises :class:`Unbuildable` instead). The
    embedded broker is checked on a process's first publish and after a failed one (then started if it is
    not running, and the rest tried once more), not before every message.
    """
    if not rows:
        return 0
    _check_broker_once()
    sent, error = _send(rows, strict)
    if error is not None and get_settings().embedded_broker:
        with contextlib.suppress(*_PUBLISH_ERRORS):
            ensure_broker()
            more, error = _send(rows[sent:], strict)
            sent += more
    if error is None:
        return sent
    log.warning("outbox: %s not sent (%s); the relay sends it when the broker is back", rows[sent].task_id, error)
    with session_scope() as s:  # the broker is down: the rest would fail the same way
        s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.task_id.in_([r.task_id for r in rows[sent:]]))
            .values(sent_at=None)
        )
    return sent


_broker_checked: tuple[int, object] = (0, None)


def _check_broker_once() -> None:
    """Start the embedded broker if it is the one configured and not running: once per process and settings."""
    global _broker_checked
    key = (os.getpid(), get_settings())
    if _broker_checked[0] != key[0] or _broker_checked[1] is not key[1]:
        with contextlib.suppress(*_PUBLISH_ERRORS):  # publishing then fails, and that is handled
            ensure_broker()
            _broker_checked = key


def _send(rows: list[OutboxMessage], strict: bool = False) -> tuple[int, Exception | None]:
    """Publish ``rows`` in order; return how many went out and the error that stopped it.

    Each row's messages take a producer from the app's pool and give it back, rather than sharing one held for
    the batch: sending a chord publishes ``celery.chord_unlock`` on a producer of Celery's own choosing, so a
    held producer plus that one exhausted the pool (``broker_pool_limit``, 10) with ten concurrent deciders.
    """
    sent = 0
    try:
        for row in rows:
            try:
                apply_canvas(row.signature["tasks"], row.args, row.task_id, row.run_id)
            except _PUBLISH_ERRORS:
                raise
            except Exception as exc:  # the message cannot be built: no re-send will help
                if strict:
                    raise Unbuildable(f"{type(exc).__name__}: {exc}") from exc
                _unbuildable(row, exc)
            sent += 1
    except _PUBLISH_ERRORS as exc:
        return sent, exc
    return sent, None


def _unbuildable(row: OutboxMessage, exc: Exception) -> None:
    """Fail the run of an outbox row whose message cannot be built (Celery refused its arguments, say)."""
    error = f"the message {row.task_id} cannot be sent: {type(exc).__name__}: {exc}"
    log.error("outbox: %s; its run %s fails", error, row.run_id)
    with session_scope() as s:
        mark_delivered(s, row.task_id)
        if row.run_id is not None:
            end_run(s, row.run_id, RunStatus.FAILED, {"error": error}, error=error)


def mark_delivered(session: Session, *task_ids: str) -> None:
    """In ``session``, with one statement: the messages of ``task_ids`` arrived (their first task ran, their
    step finished, was skipped, or runs long)."""
    session.execute(_MARK_DELIVERED, {"b_task_ids": list(task_ids), "b_now": utcnow()})


def republish_undelivered(task_id: str) -> int:
    """Publish again the row of ``task_id`` if it was never delivered (used when a duplicate step delivery
    suggests the process that should have published it died)."""
    with read_session() as s:
        rows = list(
            s.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.task_id == task_id,
                    OutboxMessage.delivered_at.is_(None),
                    _redelivery_due(utcnow()),  # else it is most likely queued behind others, not lost
                )
            )
        )
    return publish(rows)


#: Re-sends of one row back off: after its k-th re-send a row waits ``HITL_REDELIVER_AFTER`` times 2**k (k at most
#: this) before the next. A row sent but undelivered may be lost or only queued behind a backlog; re-sending
#: every queued row every ``HITL_REDELIVER_AFTER`` seconds would add the backlog to itself (seen under a
#: kill -9 storm: 6,700 re-sends for 1,200 messages, the queue never drained).
REDELIVER_BACKOFF_MAX = 5


def _backed_off(attempts: Any, since: Any, now: datetime, after: float) -> Any:
    """SQL condition: ``since`` (a time column) is at least ``after`` * 2**``attempts`` seconds before ``now``,
    the exponent capped at :data:`REDELIVER_BACKOFF_MAX`."""
    top = REDELIVER_BACKOFF_MAX
    return or_(
        *(and_(attempts == k, since <= now - timedelta(seconds=after * 2**k)) for k in range(top)),
        and_(attempts >= top, since <= now - timedelta(seconds=after * 2**top)),
    )


def _redelivery_due(now: datetime) -> Any:
    """SQL condition: the row was sent and is due for a re-send (see :data:`REDELIVER_BACKOFF_MAX`)."""
    return _backed_off(OutboxMessage.attempts, OutboxMessage.sent_at, now, get_settings().redeliver_after)


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
        _redelivery_due(now),
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
            resend = case((OutboxMessage.sent_at.is_(None), 0), else_=1)  # an unsent row's first send is no re-send
            s.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_([r.id for r in rows]))
                .values(sent_at=now, attempts=OutboxMessage.attempts + resend)
            )
        s.execute(
            delete(OutboxMessage).where(
                OutboxMessage.delivered_at <= now - timedelta(seconds=settings.outbox_retention)
            )
        )
    if rows:
        log.info("outbox relay: publishing %d message(s)", len(rows))
    return publish(rows)


def replay_stalled(limit: int = 100) -> int:
    """Send again the latest outbox message of runs that made no progress for ``HITL_STALL_AFTER`` seconds.

    A run between waits is Celery's: a message the broker loses (kombu's Redis transport removes a message from
    the queue before it records it as unacknowledged, so a worker killed in between loses it) leaves the run
    ``pending`` or ``running`` with nothing on its way. Replaying the run's latest message from hitl (its start,
    or the continuation of its latest decision) is safe by the guarantees in force: journaled steps that already
    finished return their stored results without running again, a wait already stored is not stored twice, and a
    plain task runs at least once.

    Replays back off as re-sends do (:data:`REDELIVER_BACKOFF_MAX`): after its k-th replay a run is replayed
    again only after ``HITL_STALL_AFTER`` times 2**k seconds without progress. A run of plain tasks queued
    behind a backlog looks stalled too, and replaying it every period would add the backlog to itself (seen
    under a kill -9 storm on 2 cores: 1,352 plain-task re-runs for 100 runs, the queue never drained). The
    run's ``updated_at`` is touched and its latest row's ``attempts`` raised in one transaction, so a
    concurrent relay does not replay it too. Returns how many runs were replayed.
    """
    after = get_settings().stall_after
    if after <= 0:
        return 0
    now = utcnow()
    cutoff = now - timedelta(seconds=after)
    runs, events, rows_t = tables.runs, tables.run_events, tables.outbox
    latest = rows_t.alias("latest")
    due = _backed_off(latest.c.attempts, runs.c.updated_at, now, after)  # replayed k times: quiet after * 2**k
    active = runs.c.status.in_([RunStatus.PENDING, RunStatus.RUNNING])
    latest_id = select(func.max(rows_t.c.id)).where(rows_t.c.run_id == runs.c.id).correlate(runs).scalar_subquery()
    with session_scope() as s:
        stalled = s.execute(
            select(runs.c.id, latest.c.id)
            .select_from(runs)
            .join(latest, latest.c.id == latest_id)
            .where(active, runs.c.updated_at <= cutoff, due)
            .where(~select(events.c.id).where(events.c.run_id == runs.c.id, events.c.at > cutoff).exists())
            .limit(limit)
        ).all()
        replayed = []
        for run_id, row_id in stalled:  # claim each: a concurrent relay's update then matches nothing
            touched = s.execute(
                update(runs).where(runs.c.id == run_id, active, runs.c.updated_at <= cutoff).values(updated_at=now)
            )
            if getattr(touched, "rowcount", 0) == 1:
                replayed.append(row_id)
        rows: list[OutboxMessage] = []
        if replayed:
            s.execute(update(rows_t).where(rows_t.c.id.in_(replayed)).values(attempts=rows_t.c.attempts + 1))
            rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(replayed))))
    for row in rows:
        quiet = after * 2 ** min(row.attempts - 1, REDELIVER_BACKOFF_MAX)  # the backoff this replay waited
        log.warning("run %s made no progress for %.0f s: sending %s again", row.run_id, quiet, row.task_id)
    return publish(rows)


def is_sent(task_id: str) -> bool | None:
    """Whether the outbox row of ``task_id`` was published (None: there is no such row)."""
    with read_session() as s:
        row = s.execute(select(OutboxMessage.sent_at).where(OutboxMessage.task_id == task_id)).one_or_none()
    return None if row is None else row[0] is not None
