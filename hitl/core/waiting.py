"""Reaching a wait: storing its approval(s) and moving the run to ``waiting``, in the transaction of whoever
reached it (a plain task's worker, :mod:`hitl.worker.signals`; a step's completion, :mod:`hitl.worker.steps`; or
the wait's own task, :mod:`hitl.worker.waits`). An approval created ahead under the wait's idempotency key
(:mod:`hitl.core.lookback`) is taken instead of a new one.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, literal, select, update
from sqlalchemy.orm import Session

from approvals import tables
from approvals.errors import Stop
from approvals.models import OutboxMessage, note_new_events, utcnow
from approvals.status import ApprovalStatus, EventKind, RunStatus, run_sources
from approvals.transitions import add_event, move_run, note_locked_run, on_postgresql
from hitl.core import completion, lookback, resume
from hitl.delivery import outbox
from hitl.infra.ids import new_id
from hitl.infra.jsonsafe import check_size

#: The approval row, by a Core INSERT (the ORM's unit of work costs more than the statement on this path).
_INSERT_APPROVAL = insert(tables.approvals)

__all__ = ["one_statement", "store_waits"]


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
    specs: list[dict[str, Any]] = header["waits"]
    continuation = [header["continuation"]] if header.get("continuation") else []
    join = header.get("join")
    if on_postgresql(s) and one_statement(header):
        _store_one(s, run_id, task_id, subject, specs[0], continuation)
        return []
    if len(specs) == 1 and join is None and specs[0].get("idempotency_key"):
        if s.execute(_STORED, {"a_step_task_id": task_id}).first() is not None:
            return []  # a second delivery: the approval is stored
        taken = _take_ahead(s, run_id, task_id, subject, specs[0], continuation)
        if taken is not None:
            return taken
    # The run's compare-and-set, which also checks that no approval of this task is stored (a second delivery).
    moved = s.execute(_MOVE_TO_WAITING, {"b_id": run_id, "b_updated_at": utcnow(), "a_step_task_id": task_id})
    returned = moved.one_or_none()
    if returned is None:
        return []  # a second delivery, or the run was cancelled or has ended meanwhile: nothing to wait for
    note_locked_run(s, run_id)
    requester = returned[0]
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
        row = _approval_row(run_id, task_id if index == 0 else f"{task_id}/{index}", subject, spec, continuation, now)
        row.update(policy=policy, requester=requester)
        if join_id is not None:
            row["idempotency_key"] = None
        s.execute(_INSERT_APPROVAL, row)
        detail = _waiting_detail(row)
        if join_id is not None:
            detail["parallel"] = {"id": join_id, "index": index, "size": len(specs)}
        add_event(s, run_id=run_id, kind=EventKind.WAITING, name=spec["key"], task_id=task_id, detail=detail)
    return []


def one_statement(header: dict[str, Any]) -> bool:
    """Whether :func:`store_waits` stores the compiled wait ``header`` with one statement on PostgreSQL: one
    wait, not a parallel group, and no idempotency key (which may take an approval created ahead)."""
    specs = header["waits"]
    return len(specs) == 1 and header.get("join") is None and not specs[0].get("idempotency_key")


def _store_one(
    s: Session, run_id: str, task_id: str, subject: Any, spec: dict[str, Any], continuation: list[Any]
) -> None:
    """:func:`store_waits` of one wait on PostgreSQL, in one statement (:func:`_wait_statement`): the same
    checks (a second delivery, a run that is no longer pending or running) store nothing."""
    now = utcnow()
    row = _approval_row(run_id, task_id, subject, spec, continuation, now)
    detail = _waiting_detail(row)
    params = {f"a_{k}": v for k, v in row.items() if k != "requester"}
    params.update(b_id=run_id, b_updated_at=now, e_detail=detail)
    event_id = s.execute(_wait_statement(), params).scalar_one_or_none()
    if event_id is None:
        return
    note_locked_run(s, run_id)
    event = {"run_id": run_id, "kind": EventKind.WAITING, "name": spec["key"], "task_id": task_id}
    note_new_events(s, [{**event, "detail": detail, "started_at": None, "at": now, "id": event_id}])


#: The approval columns :func:`_wait_statement` sets from parameters (``requester`` comes from the run).
_APPROVAL_COLUMNS = [
    "id",
    "run_id",
    "key",
    "status",
    "stage",
    "step_task_id",
    "subject",
    "assignees",
    "deadline",
    "continuation",
    "on_reject",
    "on_timeout",
    "timeout_default",
    "idempotency_key",
    "decision_schema",
    "policy",
    "next_reminder_at",
    "reminders_sent",
    "escalate_at",
    "created_at",
]


#: An approval stored for the task ``a_step_task_id`` (a second delivery of the task that reached the wait).
_STORED = select(tables.approvals.c.id).where(tables.approvals.c.step_task_id == bindparam("a_step_task_id"))
#: The run's move to ``waiting`` (parameters ``b_id``, ``b_updated_at``): a compare-and-set on its status that
#: also checks that no approval of the task ``a_step_task_id`` is stored; returns the run's requester, or no row
#: when nothing moved. Built once: building and cache-keying an ORM ``select`` per wait cost more than running it.
_MOVE_TO_WAITING = (
    update(tables.runs)
    .where(
        tables.runs.c.id == bindparam("b_id"),
        tables.runs.c.status.in_(run_sources(RunStatus.WAITING)),
        ~_STORED.exists(),
    )
    .values(status=RunStatus.WAITING, updated_at=bindparam("b_updated_at", type_=tables.runs.c.updated_at.type))
    .returning(tables.runs.c.requester)
)


@functools.cache
def _wait_statement() -> Any:
    """PostgreSQL: ``WITH moved AS (UPDATE hitl_runs SET status = 'waiting' ... WHERE id = :run AND status IN
    (...) AND NOT EXISTS (an approval of this step task) RETURNING requester), new_approval AS (INSERT ...
    SELECT ... FROM moved RETURNING ...) INSERT INTO hitl_run_events ... SELECT ... FROM new_approval RETURNING
    id``: the compare-and-set of the run and, only if it won, the approval and its ``waiting_for_input`` entry.

    Parameters: ``b_id`` (the run), ``b_updated_at``, ``a_<column>`` for the approval's columns
    (:data:`_APPROVAL_COLUMNS`) and ``e_detail``. No row comes back when nothing was stored.
    """
    approvals, events = tables.approvals, tables.run_events
    moved = _MOVE_TO_WAITING.cte("moved")
    columns = [bindparam(f"a_{c}", type_=approvals.c[c].type) for c in _APPROVAL_COLUMNS]
    new_approval = (
        insert(approvals)
        .from_select([*_APPROVAL_COLUMNS, "requester"], select(*columns, moved.c.requester))
        .returning(approvals.c.run_id, approvals.c.key, approvals.c.step_task_id, approvals.c.created_at)
        .cte("new_approval")
    )
    entry = select(
        new_approval.c.run_id,
        literal(EventKind.WAITING.value, events.c.kind.type),
        new_approval.c.key,
        new_approval.c.step_task_id,
        bindparam("e_detail", type_=events.c.detail.type),
        new_approval.c.created_at,
    )
    return (
        insert(events).from_select(["run_id", "kind", "name", "task_id", "detail", "at"], entry).returning(events.c.id)
    )


def _approval_row(
    run_id: str, step_task_id: str, subject: Any, spec: dict[str, Any], continuation: list[Any], now: datetime
) -> dict[str, Any]:
    """The approval row of wait ``spec`` (its policy as declared, and no requester yet)."""
    policy = dict(spec["policy"])
    return {
        "id": new_id(),
        "run_id": run_id,
        "key": spec["key"],
        "status": ApprovalStatus.PENDING,
        "stage": 0,
        "step_task_id": step_task_id,
        "subject": subject,
        "assignees": list(spec["assignees"]),
        "deadline": now + timedelta(seconds=spec["timeout"]),
        "continuation": continuation,
        "on_reject": [spec["on_reject"]] if spec.get("on_reject") else None,
        "on_timeout": [spec["on_timeout"]] if spec.get("on_timeout") else None,
        "timeout_default": spec.get("default"),
        "idempotency_key": spec.get("idempotency_key"),
        "decision_schema": spec.get("decision_schema"),
        "policy": policy,
        "requester": None,
        "next_reminder_at": _after(now, policy.get("remind_after")),
        "reminders_sent": 0,
        "escalate_at": _after(now, policy.get("escalate_after")),
        "created_at": now,
    }


def _waiting_detail(row: dict[str, Any]) -> dict[str, Any]:
    """The ``waiting_for_input`` entry's detail of approval ``row``."""
    return {"approval_id": row["id"], "deadline": row["deadline"].isoformat(), "assignees": list(row["assignees"])}


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
