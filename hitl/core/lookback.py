"""Early completion ("lookback"): approvals created ahead of the wait step that will take them.

A web app can create an approval with an idempotency key before the run reaches its wait (even before the
run exists), show it to people and let them decide it. When a wait step declares the same
``idempotency_key``, it takes that approval instead of creating one: still pending, the run waits on it as
usual; already decided, the run goes on at once with that decision, without pausing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approvals.errors import InfrastructureError, InvalidPayload
from approvals.models import Approval, utcnow
from approvals.schemas import ApprovalView
from approvals.status import ApprovalStatus, EventKind
from approvals.transitions import add_event, rowcount
from hitl.delivery.waitspec import decision_schema_of, parse_duration
from hitl.infra.db import session_scope
from hitl.infra.ids import new_id
from hitl.infra.jsonsafe import check_size, jsonable
from hitl.infra.settings import get_settings


def create_approval(
    key: str,
    *,
    idempotency_key: str,
    subject: Any = None,
    assignees: list[str] | tuple[str, ...] = (),
    timeout: str | float | None = None,
    decision: Any = None,
    requester: str | None = None,
) -> ApprovalView:
    """Create a pending approval ahead of its wait step; a second call with the same key returns the first.

    Args:
        key: the waitpoint's name (as the wait step will declare it).
        idempotency_key: up to 200 characters; the wait step that declares it takes this approval.
        subject: what is to be reviewed (JSON).
        assignees: users or groups who may decide it.
        timeout: seconds or ``"1h"``-style; default ``HITL_DEFAULT_TIMEOUT``. At the deadline it times out
            like any approval, and a wait that takes it later goes on with ``timed_out``.
        decision: a pydantic model class or JSON Schema dict the approval's data must satisfy.
        requester: who asks.

    Raises:
        InvalidPayload: an empty key, a bad timeout or schema; PayloadTooLarge: a subject over the limit.
    """
    from hitl.core.views import get_approval

    if not key.strip() or not idempotency_key.strip():
        raise InvalidPayload("an approval created ahead needs a key and an idempotency key")
    check_size(subject, "approval subject")
    existing = _by_key(idempotency_key)
    if existing:
        return get_approval(existing)
    seconds = parse_duration(timeout) if timeout is not None else timedelta(seconds=get_settings().default_timeout)
    now = utcnow()
    approval_id = new_id()
    try:
        with session_scope() as s:
            s.add(
                Approval(
                    id=approval_id,
                    run_id=None,
                    key=key,
                    status=ApprovalStatus.PENDING,
                    step_task_id=None,
                    idempotency_key=idempotency_key,
                    subject=jsonable(subject),
                    assignees=list(assignees),
                    deadline=now + seconds,
                    continuation=[],
                    decision_schema=decision_schema_of(decision),
                    policy={},
                    requester=requester,
                    created_at=now,
                )
            )
    except InfrastructureError as exc:
        if isinstance(exc.__cause__, IntegrityError) and (found := _by_key(idempotency_key)):
            return get_approval(found)
        raise
    return get_approval(approval_id)


def _by_key(idempotency_key: str) -> str | None:
    with session_scope() as s:
        return s.scalar(select(Approval.id).where(Approval.idempotency_key == idempotency_key))


def take(s: Session, idempotency_key: str, run_id: str, task_id: str, values: dict[str, Any]) -> Approval | None:
    """Let the wait step ``task_id`` of ``run_id`` take the approval created ahead under ``idempotency_key``.

    A compare-and-set on ``run_id IS NULL`` binds it to the run and stores ``values`` (the continuation and
    the wait's branches). Returns the approval, or None when none was created under that key.

    Raises:
        InvalidPayload: another run already took it.
    """
    approval = s.scalar(select(Approval).where(Approval.idempotency_key == idempotency_key))
    if approval is None:
        return None
    if approval.run_id is None:
        if approval.subject is not None:  # what the creator asked about stays the subject
            values = {k: v for k, v in values.items() if k != "subject"}
        took = rowcount(
            s.execute(
                update(Approval)
                .where(Approval.id == approval.id, Approval.run_id.is_(None))
                .values(run_id=run_id, step_task_id=task_id, **values)
            )
        )
        s.refresh(approval)
        if took:
            add_event(
                s,
                run_id=run_id,
                kind=EventKind.WAITING,
                name=approval.key,
                task_id=task_id,
                detail={
                    "approval_id": approval.id,
                    "deadline": approval.deadline.isoformat(),
                    "assignees": list(approval.assignees),
                    "created_ahead": True,
                    "status": approval.status.value,
                },
            )
    if approval.run_id != run_id:
        raise InvalidPayload(f"approval {approval.id} (key {idempotency_key!r}) was taken by run {approval.run_id}")
    return approval
