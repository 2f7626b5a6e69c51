"""The step record: what makes a step's effects happen once although Celery may deliver it twice.

Every step message has a deterministic task id (see :func:`hitl.canvas.child_task_id`), so a redelivery, a
relay re-send or a retry of the same step carries the same id. Before the body runs, :func:`claim` records
the attempt (``hitl_steps``); after, :func:`finish` moves the record out of ``started`` with a
compare-and-set on the attempt number, in the same transaction as the timeline entry, the run's status and
— for ``transactional=True`` steps — the step's own database writes. A delivery of a step already finished
returns the stored result without running the body.

A step never lets Celery send the rest of its chain: the next link (or a replacement canvas) is written to
the outbox in the completion transaction and published after commit (:mod:`hitl.outbox`), so a crash or a
broker outage between the two loses nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approvals.errors import HitlError, InfrastructureError
from approvals.models import OutboxMessage, Run, StepRecord, utcnow
from approvals.status import EventKind, RunStatus, StepStatus
from approvals.transitions import add_event, end_run, move_run
from hitl import outbox
from hitl.db import session_scope

log = logging.getLogger(__name__)

# Tables for the Core statements of the per-step hot path (no ORM unit-of-work bookkeeping), and the
# statements themselves, built once with bound parameters: SQLAlchemy then reuses their cache keys too.
_STEPS = cast(Table, StepRecord.__table__)
_RUNS = cast(Table, Run.__table__)
_RUN_STATUS = select(_RUNS.c.status).where(_RUNS.c.id == bindparam("run_id"))
_FINISH = (
    update(_STEPS)
    .where(
        _STEPS.c.task_id == bindparam("b_task_id"),
        _STEPS.c.attempt == bindparam("b_attempt"),
        _STEPS.c.status == StepStatus.STARTED,
    )
    .values(
        status=bindparam("b_status", type_=_STEPS.c.status.type),
        result=bindparam("b_result", type_=_STEPS.c.result.type),
        next_task_id=bindparam("b_next_task_id", type_=_STEPS.c.next_task_id.type),
        finished_at=bindparam("b_finished_at", type_=_STEPS.c.finished_at.type),
    )
)
_INSERT_IGNORE = {
    "sqlite": sqlite.insert(_STEPS).on_conflict_do_nothing().returning(_STEPS.c.task_id),
    # (PostgreSQL waits for a concurrent insert of the same id to commit or roll back.)
    "postgresql": postgresql.insert(_STEPS).on_conflict_do_nothing().returning(_STEPS.c.task_id),
}


class LostClaim(HitlError):
    """A later attempt claimed this step; this attempt's work was rolled back."""


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`claim` for one delivery of a step."""

    run_id: str
    task_id: str
    name: str
    attempt: int
    started_at: datetime
    #: The run is missing, cancelled or finished: do nothing and end the chain.
    skip: bool = False
    #: The step already finished (or stored its approval): do not run the body; reuse ``result``.
    done: StepStatus | None = None
    result: Any = None
    #: For a finished step: the task id of the message its completion put in the outbox.
    next_task_id: str | None = None


class _Contended(Exception):
    """Two deliveries of one step claimed it at the same moment; the loser reads the record again."""


def claim(run_id: str, name: str, task_id: str) -> Claim:
    """Record an attempt of step ``task_id`` of run ``run_id`` and say whether its body should run.

    Raises:
        InfrastructureError: the database failed, or the claim stayed contended after 5 tries.
    """
    now = utcnow()
    for _ in range(5):
        try:
            with session_scope() as s:
                return _claim(s, run_id, name, task_id, now)
        except _Contended:
            continue
    raise InfrastructureError(f"step {name} ({task_id}): claim stayed contended")


def _claim(s: Session, run_id: str, name: str, task_id: str, now: datetime) -> Claim:
    status = s.execute(_RUN_STATUS, {"run_id": run_id}).scalar()
    if status is None or status.terminal:
        if status is not None:
            add_event(
                s,
                run_id=run_id,
                kind=EventKind.STEP_SKIPPED,
                name=name,
                task_id=task_id,
                detail={"run_status": status.value},
            )
        else:
            log.warning("step %s (%s): run %s does not exist; skipped", name, task_id, run_id)
        return Claim(run_id, task_id, name, 0, now, skip=True)
    outbox.mark_delivered(s, task_id)
    if _insert_first_attempt(s, run_id, name, task_id, now):  # the usual case: one statement
        attempt = 1
    else:  # a second delivery, a retry, or a concurrent delivery that inserted the record first
        record = s.get(StepRecord, task_id)
        if record is None:
            raise _Contended
        if record.status.terminal:
            return Claim(
                run_id,
                task_id,
                name,
                record.attempt,
                now,
                done=record.status,
                result=record.result,
                next_task_id=record.next_task_id,
            )
        attempt = record.attempt + 1
        won = s.execute(
            update(_STEPS)
            .where(
                _STEPS.c.task_id == task_id,
                _STEPS.c.attempt == record.attempt,
                _STEPS.c.status.in_((StepStatus.STARTED, StepStatus.REPLACED)),
            )
            .values(status=StepStatus.STARTED, attempt=attempt, started_at=now)
        ).rowcount  # type: ignore[attr-defined]
        if not won:
            raise _Contended
    if status is RunStatus.PENDING:
        move_run(s, run_id, RunStatus.RUNNING)
    return Claim(run_id, task_id, name, attempt, now)


def _insert_first_attempt(s: Session, run_id: str, name: str, task_id: str, now: datetime) -> bool:
    """Insert the step record as attempt 1; False (nothing written) if a record of ``task_id`` exists."""
    values = {
        "task_id": task_id,
        "run_id": run_id,
        "name": name,
        "status": StepStatus.STARTED,
        "attempt": 1,
        "started_at": now,
    }
    stmt = _INSERT_IGNORE.get(s.get_bind().dialect.name)
    if stmt is None:
        try:
            with s.begin_nested():
                s.execute(insert(_STEPS), values)
        except IntegrityError:
            return False
        return True
    # RETURNING tells whether the row went in: psycopg's row count for INSERT ... ON CONFLICT is not reliable.
    return s.execute(stmt, values).first() is not None


def finish(
    s: Session,
    c: Claim,
    status: StepStatus,
    result: Any,
    *,
    send: tuple[list[dict[str, Any]], list[Any]] | None = None,
    end_of_chain: bool = False,
) -> OutboxMessage | None:
    """In the caller's transaction: close the step record (compare-and-set on the attempt), append to the
    timeline, and write what the step sends next to the outbox.

    Args:
        s: the transaction (for a transactional step, the one its own writes are in).
        c: this attempt's claim.
        status: FINISHED, WAITING, REPLACED or STOPPED.
        result: the step's return value (JSON-safe), stored for a second delivery to reuse.
        send: ``(signature dicts, args)`` of the next message — the rest of the chain with the result, or a
            replacement — or None.
        end_of_chain: nothing follows: the run succeeds with ``result``.

    Returns:
        The outbox row to publish after commit, if any.

    Raises:
        LostClaim: a later attempt claimed the step; the caller's transaction must roll back.
    """
    next_id = send[0][0]["options"]["task_id"] if send else None
    params = {
        "b_task_id": c.task_id,
        "b_attempt": c.attempt,
        "b_status": status,
        "b_result": result,
        "b_next_task_id": next_id,
        "b_finished_at": utcnow(),
    }
    won = s.execute(_FINISH, params).rowcount  # type: ignore[attr-defined]
    if not won:
        raise LostClaim(f"step {c.name} ({c.task_id}) attempt {c.attempt} lost its claim")
    if status is not StepStatus.WAITING:
        detail = {"attempt": c.attempt} if c.attempt > 1 else {}
        add_event(
            s,
            run_id=c.run_id,
            kind=EventKind.STEP_FINISHED,
            name=c.name,
            task_id=c.task_id,
            started_at=c.started_at,
            detail=detail,
        )
    if end_of_chain:
        end_run(s, c.run_id, RunStatus.SUCCEEDED, result=result)
    if send and next_id:
        return outbox.enqueue(s, c.run_id, next_id, send[0], send[1])
    return None


def stop(c: Claim, status: RunStatus, result: Any, reason: str | None) -> None:
    """Close the step record as stopped and end the run as ``status`` (see :class:`hitl.Stop`)."""
    with session_scope() as s:
        finish(s, c, StepStatus.STOPPED, result)
        end_run(s, c.run_id, status, {"reason": reason} if reason else None, result=result, error=reason)


def fail(run_id: str, name: str, task_id: str, error: str) -> None:
    """Record that step ``task_id`` raised after its retries; the run fails."""
    with session_scope() as s:
        s.execute(
            update(StepRecord)
            .where(StepRecord.task_id == task_id, StepRecord.status == StepStatus.STARTED)
            .values(status=StepStatus.FAILED, result={"error": error}, finished_at=utcnow())
        )
        add_event(
            s,
            run_id=run_id,
            kind=EventKind.STEP_FAILED,
            name=name,
            task_id=task_id,
            detail={"error": error},
            started_at=utcnow(),
        )
        end_run(s, run_id, RunStatus.FAILED, {"error": error}, error=error)
