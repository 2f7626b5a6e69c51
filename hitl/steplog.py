"""The step record: what makes a step's effects happen once although Celery may deliver it twice.

Every step message has a deterministic task id (see :func:`hitl.canvas.child_task_id`), so a redelivery, a
relay re-send or a retry of the same step carries the same id. Before the body runs, :func:`claim` records
the attempt (``hitl_steps``); after, :func:`finish` moves the record out of ``started`` with a
compare-and-set on the attempt number, in the same transaction as the timeline entry, the run's status and
— for ``transactional=True`` steps — the step's own database writes. A delivery of a step already finished
returns the stored result without running the body, and the chain goes on from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approvals.errors import HitlError, InfrastructureError
from approvals.models import Run, RunEvent, StepRecord, utcnow
from approvals.status import EventKind, RunStatus, StepStatus
from approvals.transitions import move_run
from hitl.db import session_scope

log = logging.getLogger(__name__)


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
    status = s.scalar(select(Run.status).where(Run.id == run_id))
    if status is None or status.terminal:
        if status is not None:
            s.add(
                RunEvent(
                    run_id=run_id,
                    kind=EventKind.STEP_SKIPPED,
                    name=name,
                    task_id=task_id,
                    detail={"run_status": status.value},
                )
            )
        else:
            log.warning("step %s (%s): run %s does not exist; skipped", name, task_id, run_id)
        return Claim(run_id, task_id, name, 0, now, skip=True)
    record = s.get(StepRecord, task_id)
    if record is not None and record.status.terminal:
        return Claim(run_id, task_id, name, record.attempt, now, done=record.status, result=record.result)
    if record is None:
        s.add(
            StepRecord(task_id=task_id, run_id=run_id, name=name, status=StepStatus.STARTED, attempt=1, started_at=now)
        )
        try:
            s.flush()
        except IntegrityError as exc:  # a concurrent delivery inserted the record first
            raise _Contended from exc
        attempt = 1
    else:
        attempt = record.attempt + 1
        won = s.execute(
            update(StepRecord)
            .where(
                StepRecord.task_id == task_id,
                StepRecord.attempt == record.attempt,
                StepRecord.status.in_((StepStatus.STARTED, StepStatus.REPLACED)),
            )
            .values(status=StepStatus.STARTED, attempt=attempt, started_at=now)
        ).rowcount  # type: ignore[attr-defined]
        if not won:
            raise _Contended
    if status is RunStatus.PENDING:
        move_run(s, run_id, RunStatus.RUNNING)
    return Claim(run_id, task_id, name, attempt, now)


def finish(s: Session, c: Claim, status: StepStatus, result: Any, *, end_of_chain: bool = False) -> None:
    """In the caller's transaction: close the step record (compare-and-set on the attempt) and the timeline.

    With ``end_of_chain`` the run succeeds with ``result``.

    Raises:
        LostClaim: a later attempt claimed the step; the caller's transaction must roll back.
    """
    won = s.execute(
        update(StepRecord)
        .where(
            StepRecord.task_id == c.task_id, StepRecord.attempt == c.attempt, StepRecord.status == StepStatus.STARTED
        )
        .values(status=status, result=result, finished_at=utcnow())
    ).rowcount  # type: ignore[attr-defined]
    if not won:
        raise LostClaim(f"step {c.name} ({c.task_id}) attempt {c.attempt} lost its claim")
    if status is not StepStatus.WAITING:
        s.add(
            RunEvent(
                run_id=c.run_id,
                kind=EventKind.STEP_FINISHED,
                name=c.name,
                task_id=c.task_id,
                started_at=c.started_at,
                detail={"attempt": c.attempt} if c.attempt > 1 else {},
            )
        )
    if end_of_chain and move_run(s, c.run_id, RunStatus.SUCCEEDED, result=result):
        s.add(RunEvent(run_id=c.run_id, kind=EventKind.FINISHED, name=RunStatus.SUCCEEDED.value))


def stop(c: Claim, status: RunStatus, result: Any, reason: str | None) -> None:
    """Close the step record as stopped and end the run as ``status`` (see :class:`hitl.Stop`)."""
    with session_scope() as s:
        finish(s, c, StepStatus.STOPPED, result)
        if move_run(s, c.run_id, status, result=result, error=reason):
            s.add(
                RunEvent(
                    run_id=c.run_id,
                    kind=EventKind.FINISHED,
                    name=status.value,
                    detail={"reason": reason} if reason else {},
                )
            )


def hand_chain_to_outbox(run_id: str, task_id: str, chain: list[Any] | None) -> bool:
    """After a finished step could not send the rest of its chain (broker down), put the rest in the outbox.

    Returns:
        True if the step had finished and its chain is now in the outbox (or already was); False when the
        step had not finished, which makes the error a real step failure.
    """
    from hitl import outbox

    if not chain:
        return False
    rest = [dict(sig) for sig in reversed(chain)]
    next_id = rest[0].get("options", {}).get("task_id")
    with session_scope() as s:
        record = s.get(StepRecord, task_id)
        if record is None or record.status is not StepStatus.FINISHED or not next_id:
            return False
        if outbox.is_queued(s, next_id):
            return True
        outbox.enqueue(s, run_id, next_id, rest, [record.result])
    log.warning("step %s finished but its chain could not be sent; the outbox relay will send %s", task_id, next_id)
    return True


def fail(run_id: str, name: str, task_id: str, error: str) -> None:
    """Record that step ``task_id`` raised after its retries; the run fails."""
    with session_scope() as s:
        s.execute(
            update(StepRecord)
            .where(StepRecord.task_id == task_id, StepRecord.status == StepStatus.STARTED)
            .values(status=StepStatus.FAILED, result={"error": error}, finished_at=utcnow())
        )
        s.add(
            RunEvent(
                run_id=run_id,
                kind=EventKind.STEP_FAILED,
                name=name,
                task_id=task_id,
                detail={"error": error},
                started_at=utcnow(),
            )
        )
        if move_run(s, run_id, RunStatus.FAILED, error=error):
            s.add(
                RunEvent(run_id=run_id, kind=EventKind.FINISHED, name=RunStatus.FAILED.value, detail={"error": error})
            )
