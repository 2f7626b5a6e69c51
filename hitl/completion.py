"""The completion handler: record a decision or a timeout and resume the run's continuation, once.

Every path (CLI, Python API, HTTP, the deadline sweep) comes through :func:`decide` or
:func:`sweep_deadlines`. In one transaction: the approval moves pending → approved/rejected/timed_out by
compare-and-set, the decision row is written, the run moves waiting → running and the continuation is
written to the outbox. After commit the continuation is sent. The compare-and-set is what makes a second
decision, a decision after the deadline and a decision racing the sweep lose cleanly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from approvals.errors import InvalidDecision
from approvals.models import Approval, DecisionRecord, OutboxMessage, RunEvent, utcnow
from approvals.policy import continuation_for
from approvals.schemas import Decision, Outcome
from approvals.status import EventKind, RunStatus
from approvals.transitions import end_run, move_run, resolve_approval, why_not_pending
from hitl import outbox
from hitl.db import session_scope
from hitl.jsonsafe import check_size

#: Actor recorded on decisions made by the deadline sweep.
DEADLINE_ACTOR = "hitl:deadline"
_TERMINAL_FOR = {
    Outcome.APPROVED: RunStatus.SUCCEEDED,
    Outcome.REJECTED: RunStatus.REJECTED,
    Outcome.TIMED_OUT: RunStatus.TIMED_OUT,
}


def decide(
    approval_id: str,
    outcome: Outcome | str,
    *,
    actor: str,
    comment: str | None = None,
    data: dict[str, Any] | None = None,
    channel: str = "api",
) -> Decision:
    """Record a person's decision on a pending approval and resume its run.

    Args:
        approval_id: the approval's id.
        outcome: ``"approved"`` or ``"rejected"``.
        actor: who decided (recorded as the decider); non-empty.
        comment: free text shown in the timeline and passed to the continuation.
        data: a JSON object passed to the continuation in ``Decision.data``.
        channel: where the decision came from (``cli``, ``api``, ``http``), for the audit trail.

    Returns:
        The :class:`~approvals.schemas.Decision` the continuation receives.

    Raises:
        InvalidDecision: bad outcome, empty actor, or ``data`` not a JSON object.
        PayloadTooLarge: ``data`` exceeds ``HITL_MAX_PAYLOAD_BYTES``.
        ApprovalNotFound, AlreadyDecided, ApprovalExpired, ApprovalCancelled: the compare-and-set lost;
            nothing was changed.
    """
    try:
        outcome = Outcome(outcome)
    except ValueError:
        raise InvalidDecision(f"outcome must be 'approved' or 'rejected', not {outcome!r}") from None
    if outcome is Outcome.TIMED_OUT:
        raise InvalidDecision("only the deadline sweep times an approval out")
    if not actor or not actor.strip():
        raise InvalidDecision("a decision needs an actor (who decided)")
    if data is not None and not isinstance(data, dict):
        raise InvalidDecision("decision data must be a JSON object")
    data = data or {}
    check_size(data, "decision data")
    now = utcnow()
    with session_scope() as s:
        if not resolve_approval(s, approval_id, outcome.approval_status, before_deadline=now):
            raise why_not_pending(s, approval_id, now)
        approval = s.get_one(Approval, approval_id)
        decision = _record(s, approval, outcome, actor.strip(), comment, data, channel, now, defaulted=False)
        sent = _resume(s, approval, decision)
    outbox.publish(sent)
    return decision


def continuation_sent(approval_id: str) -> bool | None:
    """Whether the continuation of a decided approval has been sent to the broker (None: it has none).

    False means the broker was unreachable at decision time; the outbox relay sends it when it is back.
    """
    return outbox.is_sent(resume_task_id(approval_id))


def resume_task_id(approval_id: str) -> str:
    """The (deterministic) task id of the first continuation step of ``approval_id``."""
    return f"{approval_id}.resume"


def approve(
    approval_id: str,
    *,
    actor: str,
    comment: str | None = None,
    data: dict[str, Any] | None = None,
    channel: str = "api",
) -> Decision:
    """Approve a pending approval; see :func:`decide` for arguments and errors."""
    return decide(approval_id, Outcome.APPROVED, actor=actor, comment=comment, data=data, channel=channel)


def reject(
    approval_id: str, *, actor: str, reason: str | None = None, data: dict[str, Any] | None = None, channel: str = "api"
) -> Decision:
    """Reject a pending approval with ``reason`` (passed as the comment); see :func:`decide`."""
    return decide(approval_id, Outcome.REJECTED, actor=actor, comment=reason, data=data, channel=channel)


def sweep_deadlines(limit: int = 500) -> int:
    """Time out up to ``limit`` pending approvals whose deadline has passed; return how many this call did.

    Set-based (see :mod:`hitl.deadlines`): the due ids come from the ``(status, deadline)`` index, and an
    ``UPDATE ... RETURNING`` by id moves them pending → timed_out, its WHERE clause being the compare-and-set
    (also requiring ``deadline <= now``), so two beats or a racing decision never resolve one twice. The
    continuation resumes with outcome ``timed_out``, or with the wait's declared default.
    """
    from hitl.deadlines import sweep  # (it builds on this module)

    return sweep(limit)


def _record(
    s: Session,
    approval: Approval,
    outcome: Outcome,
    actor: str,
    comment: str | None,
    data: dict[str, Any],
    channel: str,
    now: datetime,
    *,
    defaulted: bool,
) -> Decision:
    s.add(
        DecisionRecord(
            approval_id=approval.id,
            outcome=outcome.value,
            data=data,
            actor=actor,
            comment=comment,
            channel=channel,
            decided_at=now,
        )
    )
    s.add(
        RunEvent(
            run_id=approval.run_id,
            kind=EventKind.RESOLVED,
            name=approval.key,
            detail={
                "approval_id": approval.id,
                "outcome": outcome.value,
                "actor": actor,
                "comment": comment,
                "channel": channel,
                "defaulted": defaulted,
            },
        )
    )
    return Decision(
        approval_id=approval.id,
        run_id=approval.run_id,
        key=approval.key,
        outcome=outcome,
        subject=approval.subject,
        data=data,
        actor=actor,
        comment=comment,
        decided_at=now,
        defaulted=defaulted,
    )


def _resume(s: Session, approval: Approval, decision: Decision) -> list[OutboxMessage]:
    """Write the continuation for ``decision`` to the outbox (or end the run if there is none)."""
    sigs = continuation_for(approval, decision.outcome)
    payload = decision.model_dump(mode="json")
    if not sigs:
        status = _TERMINAL_FOR[decision.outcome]
        end_run(s, approval.run_id, status, result=payload)
        return []
    move_run(s, approval.run_id, RunStatus.RUNNING)
    return [outbox.enqueue(s, approval.run_id, resume_task_id(approval.id), sigs, [payload])]
