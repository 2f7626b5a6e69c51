"""Runs: starting one (idempotently), cancelling one, and the bookkeeping every step does on its run."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from approvals.errors import InfrastructureError, InvalidTransition, RunNotFound
from approvals.models import Run, RunEvent, utcnow
from approvals.status import EventKind, RunStatus
from approvals.transitions import cancel_pending_approvals, move_run
from hitl import outbox
from hitl.canvas import bind_run
from hitl.db import session_scope
from hitl.ids import new_id
from hitl.jsonsafe import check_size, jsonable
from hitl.registry import get_workflow

log = logging.getLogger(__name__)


def start(workflow: str, payload: Any = None, *, idempotency_key: str | None = None) -> str:
    """Create a run of ``workflow`` and enqueue its first step; return the run id.

    The run row and its start message are committed together (outbox), then the message is sent. With an
    ``idempotency_key``, a second call with the same key returns the first call's run id and starts nothing.

    Args:
        workflow: a registered workflow name (see ``hitl workflows``).
        payload: JSON-serialisable input, validated by the workflow's input model if it has one.
        idempotency_key: any string up to 200 characters, unique per run.

    Raises:
        UnknownWorkflow: no workflow has that name.
        InvalidPayload: the payload fails the workflow's input model or is not JSON.
        PayloadTooLarge: the payload exceeds ``HITL_MAX_PAYLOAD_BYTES``.
    """
    if idempotency_key is not None:
        existing = _run_for_key(idempotency_key)
        if existing:
            return existing
    wf = get_workflow(workflow)
    payload = wf.validate(payload)
    check_size(payload)
    run_id = new_id()
    sigs = bind_run(wf.build(payload), run_id)
    try:
        with session_scope() as s:
            s.add(
                Run(
                    id=run_id,
                    workflow=wf.name,
                    status=RunStatus.PENDING,
                    idempotency_key=idempotency_key,
                    payload=jsonable(payload),
                )
            )
            s.flush()
            s.add(RunEvent(run_id=run_id, kind=EventKind.CREATED, name=wf.name))
            row = outbox.enqueue(s, run_id, f"{run_id}.start", sigs, [])
            row_id = row.id
    except InfrastructureError as exc:
        if idempotency_key is not None and isinstance(exc.__cause__, IntegrityError):
            existing = _run_for_key(idempotency_key)
            if existing:
                return existing
        raise
    outbox.dispatch([row_id])
    return run_id


def _run_for_key(key: str) -> str | None:
    with session_scope() as s:
        return s.scalar(select(Run.id).where(Run.idempotency_key == key))


def cancel(run_id: str, *, actor: str = "operator", reason: str | None = None) -> list[str]:
    """Cancel run ``run_id`` and, in the same transaction, its pending approvals; return their ids.

    Steps of a cancelled run that are still queued do nothing when they start; deciding a cancelled
    approval afterwards raises :class:`~approvals.errors.ApprovalCancelled`.

    Raises:
        RunNotFound: no run has that id.
        InvalidTransition: the run already finished.
    """
    with session_scope() as s:
        if not move_run(s, run_id, RunStatus.CANCELLED, error=reason):
            status = s.scalar(select(Run.status).where(Run.id == run_id))
            if status is None:
                raise RunNotFound(f"no run has id {run_id!r}")
            raise InvalidTransition(f"run {run_id} already finished as {status.value}")
        cancelled = cancel_pending_approvals(s, run_id)
        for approval_id in cancelled:
            s.add(
                RunEvent(
                    run_id=run_id,
                    kind=EventKind.RESOLVED,
                    name=approval_id,
                    detail={"outcome": "cancelled", "actor": actor},
                )
            )
        s.add(
            RunEvent(
                run_id=run_id,
                kind=EventKind.FINISHED,
                name=RunStatus.CANCELLED.value,
                detail={"actor": actor, "reason": reason},
            )
        )
    return cancelled


def begin_step(run_id: str, name: str, task_id: str | None) -> bool:
    """Check that run ``run_id`` may execute a step now; move a pending run to running.

    Returns:
        False when the run is missing, cancelled or finished: the step must do nothing.
    """
    with session_scope() as s:
        status = s.scalar(select(Run.status).where(Run.id == run_id))
        if status is None:
            log.warning("step %s (%s): run %s does not exist; skipped", name, task_id, run_id)
            return False
        if status.terminal:
            s.add(
                RunEvent(
                    run_id=run_id,
                    kind=EventKind.STEP_SKIPPED,
                    name=name,
                    task_id=task_id,
                    detail={"run_status": status.value},
                )
            )
            return False
        if status is RunStatus.PENDING:
            move_run(s, run_id, RunStatus.RUNNING)
    return True


def finish_step(
    run_id: str, name: str, task_id: str | None, started_at: datetime, result: Any, *, end_of_chain: bool
) -> None:
    """Record that a step returned; at the end of the chain, the run succeeds with ``result``."""
    with session_scope() as s:
        s.add(RunEvent(run_id=run_id, kind=EventKind.STEP_FINISHED, name=name, task_id=task_id, started_at=started_at))
        if end_of_chain and move_run(s, run_id, RunStatus.SUCCEEDED, result=result):
            s.add(RunEvent(run_id=run_id, kind=EventKind.FINISHED, name=RunStatus.SUCCEEDED.value))


def end_run(
    run_id: str,
    status: RunStatus,
    result: Any,
    *,
    step: str,
    task_id: str | None,
    started_at: datetime | None,
    reason: str | None = None,
) -> None:
    """End run ``run_id`` as ``status`` from inside a step (see :class:`hitl.Stop`)."""
    with session_scope() as s:
        s.add(RunEvent(run_id=run_id, kind=EventKind.STEP_FINISHED, name=step, task_id=task_id, started_at=started_at))
        if move_run(s, run_id, status, result=result, error=reason):
            s.add(
                RunEvent(
                    run_id=run_id,
                    kind=EventKind.FINISHED,
                    name=status.value,
                    detail={"reason": reason} if reason else {},
                )
            )


def fail_step(run_id: str, name: str, task_id: str | None, error: str) -> None:
    """Record that a step raised after its retries; the run fails."""
    with session_scope() as s:
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
