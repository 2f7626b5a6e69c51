"""The wait step: store a pending approval with the rest of the chain, then end the chain.

While a run waits, only database rows hold it: no worker, no ETA message, no broker key. The deadline is a
column the beat sweep queries (see :mod:`hitl.completion`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Signature
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals.errors import InvalidPayload
from approvals.models import Approval, RunEvent, utcnow
from approvals.policy import check_decision_schema
from approvals.schemas import Outcome
from approvals.status import ApprovalStatus, EventKind, RunStatus
from approvals.transitions import move_run
from hitl.canvas import as_sig_list
from hitl.ids import new_id
from hitl.jsonsafe import check_size
from hitl.settings import get_settings
from hitl.steps import Step, parse_duration, step


def decision_schema_of(decision: Any) -> dict[str, Any] | None:
    """Return the JSON Schema of a wait's ``decision`` option: a pydantic model class or a schema dict.

    Raises:
        InvalidPayload: neither, or not a valid JSON Schema of an object.
    """
    if decision is None:
        return None
    if isinstance(decision, type) and issubclass(decision, BaseModel):
        decision = decision.model_json_schema()
    if not isinstance(decision, dict):
        raise InvalidPayload("decision must be a pydantic model class or a JSON Schema dict")
    check_decision_schema(decision)
    return decision


class WaitStep(Step):
    """The wait step's task class: ``.s(decision=Model)`` turns the model into its JSON Schema when the
    signature is made, so only JSON travels in the message."""

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """Celery's ``s()``, with ``decision`` turned into a JSON Schema."""
        if kwargs.get("decision") is not None:
            kwargs["decision"] = decision_schema_of(kwargs["decision"])
        return super().s(*args, **kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """Celery's ``si()``, with ``decision`` turned into a JSON Schema."""
        if kwargs.get("decision") is not None:
            kwargs["decision"] = decision_schema_of(kwargs["decision"])
        return super().si(*args, **kwargs)


@step(name="hitl.wait_for_approval", bind=True, transactional=True, base=WaitStep)
def wait_for_approval(
    self: Any,
    subject: Any = None,
    *,
    session: Session,
    key: str,
    run_id: str,
    timeout: str | float | None = None,
    assignees: list[str] | tuple[str, ...] = (),
    on_reject: Any = None,
    on_timeout: Any = None,
    default: str | None = None,
    decision: dict[str, Any] | None = None,
) -> str:
    """Pause the run for a human decision on ``subject`` (the previous step's result).

    Use it in a chain: ``draft.s(t) | wait_for_approval.s(key="editor-review", timeout="1h") | publish.s()``.

    Args:
        subject: what is to be reviewed; shown by ``hitl approvals show`` and passed on in
            ``Decision.subject``.
        key: names this waitpoint within the workflow (e.g. ``"editor-review"``).
        timeout: seconds, or ``"30s"``/``"15m"``/``"1h"``/``"2d"``; default ``HITL_DEFAULT_TIMEOUT``
            (one day). Every wait has a deadline.
        assignees: who is asked (users or groups), shown to approvers.
        on_reject: a signature or chain resumed instead of the continuation when rejected.
        on_timeout: a signature or chain resumed instead of the continuation at the deadline.
        default: ``"approved"`` or ``"rejected"``: the outcome applied at the deadline instead of
            ``timed_out``.
        decision: a pydantic model class (turned into its JSON Schema by ``.s()``) or a JSON Schema dict
            that an approval's data must satisfy; the inbox renders a form from it and a decision failing
            it is refused (``InvalidDecision``: CLI exit 2, HTTP 422) with nothing changed.

    Returns:
        The approval id. The chain ends here; the continuation (the rest of the chain) is stored and is
        resumed by the completion handler with a :class:`~approvals.schemas.Decision`.

    Raises:
        InvalidPayload: a bad ``timeout``, ``default`` or ``decision`` schema, or a subject over the size limit.
    """
    request = self.request
    continuation = list(request.get("hitl_rest") or [])  # the rest of the chain, resumed from this row
    request.hitl_waiting = True
    if default is not None and default not in (Outcome.APPROVED, Outcome.REJECTED):
        raise InvalidPayload(f"default must be 'approved' or 'rejected', not {default!r}")
    seconds = parse_duration(timeout) if timeout is not None else timedelta(seconds=get_settings().default_timeout)
    check_size(subject, "approval subject")
    schema = decision_schema_of(decision)
    now = utcnow()
    s = session  # the step's own transaction: the approval commits with the step record (steplog)
    existing = s.scalar(select(Approval.id).where(Approval.step_task_id == request.id))
    if existing:  # a redelivery of this wait step: the approval is already stored
        return str(existing)
    approval_id = new_id()
    s.add(
        Approval(
            id=approval_id,
            run_id=run_id,
            key=key,
            status=ApprovalStatus.PENDING,
            step_task_id=request.id,
            subject=subject,
            assignees=list(assignees),
            deadline=now + seconds,
            continuation=continuation,
            on_reject=as_sig_list(on_reject),
            on_timeout=as_sig_list(on_timeout),
            timeout_default=default,
            decision_schema=schema,
            created_at=now,
        )
    )
    s.flush()
    move_run(s, run_id, RunStatus.WAITING)
    s.add(
        RunEvent(
            run_id=run_id,
            kind=EventKind.WAITING,
            name=key,
            task_id=request.id,
            detail={
                "approval_id": approval_id,
                "deadline": (now + seconds).isoformat(),
                "assignees": list(assignees),
            },
        )
    )
    return approval_id
