"""The wait step: store a pending approval with the rest of the chain, then end the chain.

While a run waits, only database rows hold it: no worker, no ETA message, no broker key. The deadline is a
column the beat sweep queries (see :mod:`hitl.completion`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from celery import Signature
from pydantic import BaseModel, ValidationError
from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from approvals.errors import InvalidPayload
from approvals.models import Approval, Run, utcnow
from approvals.policy import FAIL_DEFAULT, check_decision_schema
from approvals.schemas import ApprovalPolicy, Outcome
from approvals.status import ApprovalStatus, EventKind, RunStatus
from approvals.transitions import add_event, move_run
from hitl import completion, lookback
from hitl.canvas import as_sig_list
from hitl.ids import new_id
from hitl.jsonsafe import check_size
from hitl.settings import get_settings
from hitl.steps import Step, Stop, parse_duration, step

#: The approval row, by a Core INSERT (the ORM's unit of work costs more than the statement on this path).
_INSERT_APPROVAL = insert(cast(Table, Approval.__table__))


def _policy(**values: Any) -> ApprovalPolicy:
    for name in ("remind_after", "remind_every", "escalate_after"):
        if values[name] is not None:
            values[name] = parse_duration(values[name]).total_seconds()
    try:
        policy = ApprovalPolicy(**values)
    except ValidationError as exc:
        raise InvalidPayload(f"invalid approval policy: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    if policy.escalate_after and not policy.escalate_to:
        raise InvalidPayload("escalate_after needs escalate_to (whom to escalate to)")
    if policy.remind_every and not policy.remind_after:
        raise InvalidPayload("remind_every needs remind_after (when the first reminder goes)")
    return policy


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
    quorum: int = 1,
    stages: list[list[str]] | None = None,
    any_rejection_rejects: bool = True,
    forbid_requester: bool = False,
    remind_after: str | float | None = None,
    remind_every: str | float | None = None,
    escalate_after: str | float | None = None,
    escalate_to: list[str] | tuple[str, ...] = (),
    default_data: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Any:
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
        default: ``"approved"``, ``"rejected"`` or ``"failed"``: applied at the deadline instead of
            ``timed_out`` (``"failed"`` ends the run as failed; the others resume with ``defaulted=True``).
        default_data: the data the continuation receives with an approved or rejected default.
        quorum: approvals from distinct people needed (in each stage); each vote is recorded and the
            continuation runs once, when the outcome is settled.
        stages: sequential sign-off, e.g. ``[["legal"], ["finance"]]``: each stage's assignees decide in
            turn (``assignees`` is then the first stage's).
        any_rejection_rejects: with a quorum, whether one rejection rejects (default) or only enough
            rejections to make the quorum unreachable.
        forbid_requester: the person who started the run may not decide it.
        remind_after, remind_every: remind the assignees at ``remind_after`` and every ``remind_every`` after.
        escalate_after, escalate_to: at ``escalate_after``, add ``escalate_to`` to the assignees and notify them.
        idempotency_key: take the approval created ahead under this key (:func:`hitl.create_approval`)
            instead of creating one; if it was already decided, the run goes on at once with that decision.
        decision: a pydantic model class (turned into its JSON Schema by ``.s()``) or a JSON Schema dict
            that an approval's data must satisfy; the inbox renders a form from it and a decision failing
            it is refused (``InvalidDecision``: CLI exit 2, HTTP 422) with nothing changed.

    Returns:
        The approval id. The chain ends here; the continuation (the rest of the chain) is stored and is
        resumed by the completion handler with a :class:`~approvals.schemas.Decision`. (When it takes an
        approval created ahead that was already decided, it returns that decision and the chain goes on.)

    Raises:
        InvalidPayload: a bad ``timeout``, ``default`` or ``decision`` schema, or a subject over the size limit.
    """
    request = self.request
    continuation = list(request.get("hitl_rest") or [])  # the rest of the chain, resumed from this row
    request.hitl_waiting = True
    if default is not None and default not in (Outcome.APPROVED, Outcome.REJECTED, FAIL_DEFAULT):
        raise InvalidPayload(f"default must be 'approved', 'rejected' or 'failed', not {default!r}")
    seconds = parse_duration(timeout) if timeout is not None else timedelta(seconds=get_settings().default_timeout)
    policy = _policy(
        quorum=quorum,
        stages=stages or [],
        any_rejection_rejects=any_rejection_rejects,
        forbid_requester=forbid_requester,
        remind_after=remind_after,
        remind_every=remind_every,
        escalate_after=escalate_after,
        escalate_to=list(escalate_to),
        default_data=default_data,
    )
    if policy.stages:
        assignees = policy.stages[0]
    check_size(subject, "approval subject")
    schema = decision_schema_of(decision)
    now = utcnow()
    s = session  # the step's own transaction: the approval commits with the step record (steplog)
    existing = s.scalar(select(Approval.id).where(Approval.step_task_id == request.id))
    if existing:  # a redelivery of this wait step: the approval is already stored
        return str(existing)
    if idempotency_key is not None:
        taken = lookback.take(
            s,
            idempotency_key,
            run_id,
            request.id,
            {
                "continuation": continuation,
                "on_reject": as_sig_list(on_reject),
                "on_timeout": as_sig_list(on_timeout),
                "timeout_default": default,
                "subject": subject,
            },
        )
        if taken is not None:
            return _go_on_or_wait(s, request, taken, run_id)
    approval_id = new_id()
    s.execute(
        _INSERT_APPROVAL,
        {
            "id": approval_id,
            "run_id": run_id,
            "key": key,
            "status": ApprovalStatus.PENDING,
            "step_task_id": request.id,
            "subject": subject,
            "assignees": list(assignees),
            "deadline": now + seconds,
            "continuation": continuation,
            "on_reject": as_sig_list(on_reject),
            "on_timeout": as_sig_list(on_timeout),
            "timeout_default": default,
            "idempotency_key": idempotency_key,
            "decision_schema": schema,
            "policy": policy.model_dump(exclude_defaults=True),
            "requester": s.scalar(select(Run.requester).where(Run.id == run_id)),
            "next_reminder_at": now + timedelta(seconds=policy.remind_after) if policy.remind_after else None,
            "escalate_at": now + timedelta(seconds=policy.escalate_after) if policy.escalate_after else None,
            "created_at": now,
        },
    )
    move_run(s, run_id, RunStatus.WAITING)
    add_event(
        s,
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
    return approval_id


def _go_on_or_wait(s: Session, request: Any, approval: Approval, run_id: str) -> Any:
    """A wait took an approval created ahead: wait on it if pending, else go on at once with its decision."""
    if approval.status is ApprovalStatus.PENDING:
        move_run(s, run_id, RunStatus.WAITING)
        return approval.id
    if approval.status is ApprovalStatus.CANCELLED:
        raise Stop(RunStatus.CANCELLED, {"approval_id": approval.id}, reason="the approval was cancelled")
    decision = completion.decision_of(approval).model_copy(update={"run_id": run_id})
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
        return approval.id
    request.hitl_waiting = False
    request.hitl_send = (sigs, [decision.model_dump(mode="json")])
    return decision.model_dump(mode="json")
