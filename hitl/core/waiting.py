"""Reaching a wait: storing its approval(s) and moving the run to ``waiting``, in the transaction of whoever
reached it (a plain task's worker, :mod:`hitl.worker.signals`; a step's completion, :mod:`hitl.worker.steps`; or
the wait's own task, :mod:`hitl.worker.waits`). An approval created ahead under the wait's idempotency key
(:mod:`hitl.core.lookback`) is taken instead of a new one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from approvals import tables
from approvals.errors import Stop
from approvals.models import Approval, OutboxMessage, utcnow
from approvals.status import ApprovalStatus, EventKind, RunStatus
from approvals.transitions import add_event, move_run, move_run_returning
from hitl.core import completion, lookback, resume
from hitl.delivery import outbox
from hitl.infra.ids import new_id
from hitl.infra.jsonsafe import check_size

#: The approval row, by a Core INSERT (the ORM's unit of work costs more than the statement on this path).
_INSERT_APPROVAL = insert(tables.approvals)

__all__ = ["store_waits"]


def store_waits(s: Session, run_id: str, task_id: str, subject: Any, header: dict[str, Any]) -> list[OutboxMessage]:
    """In ``s``: store the approval(s) of a wait reached by task ``task_id`` of run ``run_id``, and move the run to
    ``waiting``.

    Args:
        s: the transaction of the task that reached the wait.
        run_id: the run.
        task_id: the task that reached it (its deterministic id keys the approvals: a second delivery stores
            nothing).
        subject: what is to be reviewed (the task's result).
        header: the compiled wait (:data:`hitl.delivery.canvas.HEADER_WAIT`): ``{"waits": [spec, ...], "join": ...,
            "continuation": canvas | None}``.

    Returns:
        Outbox rows to publish after commit: empty, except when a wait took an approval created ahead that
        was already decided (the run then goes on at once).

    Raises:
        InvalidPayload: the subject is over ``HITL_MAX_PAYLOAD_BYTES``, or an approval created ahead under the
            wait's idempotency key belongs to another run.
        Stop: the approval created ahead was cancelled (the run ends as cancelled).
    """
    check_size(subject, "approval subject")
    if s.scalar(select(Approval.id).where(Approval.step_task_id == task_id)):
        return []  # a second delivery: the approvals are stored
    specs: list[dict[str, Any]] = header["waits"]
    continuation = [header["continuation"]] if header.get("continuation") else []
    join = header.get("join")
    if len(specs) == 1 and join is None and specs[0].get("idempotency_key"):
        taken = _take_ahead(s, run_id, task_id, subject, specs[0], continuation)
        if taken is not None:
            return taken
    moved, requester = move_run_returning(s, run_id, RunStatus.WAITING, "requester")
    if not moved:
        return []  # the run was cancelled or has ended meanwhile: nothing to wait for
    join_id = new_id() if join is not None else None
    now = utcnow()
    for index, spec in enumerate(specs):
        policy = dict(spec["policy"])
        if join_id is not None:
            policy["join"] = {
                "id": join_id,
                "index": index,
                "size": len(specs),
                "any_rejection_rejects": bool(join.get("any_rejection_rejects", True)),  # type: ignore[union-attr]
            }
        deadline = now + timedelta(seconds=spec["timeout"])
        approval_id = new_id()
        s.execute(
            _INSERT_APPROVAL,
            {
                "id": approval_id,
                "run_id": run_id,
                "key": spec["key"],
                "status": ApprovalStatus.PENDING,
                "step_task_id": task_id if index == 0 else f"{task_id}/{index}",
                "subject": subject,
                "assignees": list(spec["assignees"]),
                "deadline": deadline,
                "continuation": continuation,
                "on_reject": [spec["on_reject"]] if spec.get("on_reject") else None,
                "on_timeout": [spec["on_timeout"]] if spec.get("on_timeout") else None,
                "timeout_default": spec.get("default"),
                "idempotency_key": spec.get("idempotency_key") if join_id is None else None,
                "decision_schema": spec.get("decision_schema"),
                "policy": policy,
                "requester": requester,
                "next_reminder_at": _after(now, policy.get("remind_after")),
                "escalate_at": _after(now, policy.get("escalate_after")),
                "created_at": now,
            },
        )
        detail: dict[str, Any] = {
            "approval_id": approval_id,
            "deadline": deadline.isoformat(),
            "assignees": list(spec["assignees"]),
        }
        if join_id is not None:
            detail["parallel"] = {"id": join_id, "index": index, "size": len(specs)}
        add_event(s, run_id=run_id, kind=EventKind.WAITING, name=spec["key"], task_id=task_id, detail=detail)
    return []


def _after(now: Any, seconds: float | None) -> Any:
    return now + timedelta(seconds=seconds) if seconds else None


def _take_ahead(
    s: Session, run_id: str, task_id: str, subject: Any, spec: dict[str, Any], continuation: list[Any]
) -> list[OutboxMessage] | None:
    """Take the approval created ahead under the wait's idempotency key: wait on it if pending, else go on at once
    with its decision. None when no approval was created under that key."""
    approval = lookback.take(
        s,
        spec["idempotency_key"],
        run_id,
        task_id,
        {
            "continuation": continuation,
            "on_reject": [spec["on_reject"]] if spec.get("on_reject") else None,
            "on_timeout": [spec["on_timeout"]] if spec.get("on_timeout") else None,
            "timeout_default": spec.get("default"),
            "subject": subject,
        },
    )
    if approval is None:
        return None
    if approval.status is ApprovalStatus.PENDING:
        move_run(s, run_id, RunStatus.WAITING)
        return []
    if approval.status is ApprovalStatus.CANCELLED:
        raise Stop(RunStatus.CANCELLED, {"approval_id": approval.id}, reason="the approval was cancelled")
    decision = resume.decision_of(approval).model_copy(update={"run_id": run_id})
    add_event(
        s,
        run_id=run_id,
        kind=EventKind.RESOLVED,
        name=approval.key,
        detail={
            "approval_id": approval.id,
            "outcome": decision.outcome.value,
            "actor": decision.actor,
            "comment": decision.comment,
            "decided_ahead": True,
        },
    )
    sigs = completion.continuation_of(s, approval, decision)
    if not sigs:  # the run ended with the outcome (nothing after the wait, or a failed default)
        return []
    move_run(s, run_id, RunStatus.RUNNING)
    args = [decision.model_dump(mode="json")]
    return [outbox.enqueue(s, run_id, resume.resume_task_id(approval.id), sigs, args)]
