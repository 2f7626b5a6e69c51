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

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approvals.errors import ApprovalNotFound, InvalidDecision, LinkUsed, NotAllowed
from approvals.models import Approval, DecisionRecord, OutboxMessage, RunEvent, UsedToken, utcnow
from approvals.policy import continuation_for, timeout_outcome, validate_decision_data
from approvals.schemas import Decision, Outcome
from approvals.status import ApprovalStatus, EventKind, RunStatus
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
    link_nonce: str | None = None,
) -> Decision:
    """Record a person's decision on a pending approval and resume its run.

    Args:
        approval_id: the approval's id.
        outcome: ``"approved"`` or ``"rejected"``.
        actor: who decided (recorded as the decider); non-empty.
        comment: free text shown in the timeline and passed to the continuation.
        data: a JSON object passed to the continuation in ``Decision.data``; an approval's data must
            satisfy the decision schema its wait declared.
        channel: where the decision came from (``cli``, ``api``, ``http``, ``link``, ``inbox``), for the
            audit trail.
        link_nonce: the nonce of the single-use link that carries this decision; stored in the same
            transaction, so a link decides at most once.

    Returns:
        The :class:`~approvals.schemas.Decision` the continuation receives.

    Raises:
        InvalidDecision: bad outcome, empty actor, ``data`` not a JSON object or failing the wait's decision
            schema (``details`` itemises the failures).
        PayloadTooLarge: ``data`` exceeds ``HITL_MAX_PAYLOAD_BYTES``.
        ApprovalNotFound, AlreadyDecided, ApprovalExpired, ApprovalCancelled: the compare-and-set lost;
            nothing was changed.
        LinkUsed: ``link_nonce`` was used before; nothing was changed.
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
        validate_decision_data(approval.decision_schema, data, outcome)  # raising rolls the CAS back
        if link_nonce is not None:
            _use_link(s, approval_id, link_nonce, actor)
        decision = _record(s, approval, outcome, actor.strip(), comment, data, channel, now, defaulted=False)
        sent = _resume(s, approval, decision)
    outbox.publish(sent)
    return decision


def refuse(approval_id: str, *, actor: str, channel: str, reason: str) -> NotAllowed:
    """Record a refused decision attempt on ``approval_id`` in its run's timeline; return the error to raise.

    Nothing else changes: the approval stays as it was. Used when a caller without the right to decide
    tries to (an API key without the ``decide`` scope, a token made for another approval).

    Raises:
        ApprovalNotFound: no approval has that id (nothing is recorded).
    """
    with session_scope() as s:
        run_id = s.scalar(select(Approval.run_id).where(Approval.id == approval_id))
        if run_id is None:
            raise ApprovalNotFound(f"no approval has id {approval_id!r}")
        s.add(
            RunEvent(
                run_id=run_id,
                kind=EventKind.REFUSED,
                name=approval_id,
                detail={"approval_id": approval_id, "actor": actor, "channel": channel, "reason": reason},
            )
        )
    return NotAllowed(reason)


def _use_link(s: Session, approval_id: str, nonce: str, actor: str) -> None:
    s.add(UsedToken(nonce=nonce, approval_id=approval_id, actor=actor))
    try:
        s.flush()
    except IntegrityError:
        raise LinkUsed("this link was already used; a one-click link decides once") from None


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

    The query walks the ``(status, deadline)`` index. Each approval moves pending → timed_out by
    compare-and-set (also requiring ``deadline <= now``), so two beats or a racing decision never resolve one
    twice. The continuation resumes with outcome ``timed_out``, or with the wait's declared default.
    """
    now = utcnow()
    with session_scope() as s:
        ids = list(
            s.scalars(
                select(Approval.id)
                .where(Approval.status == ApprovalStatus.PENDING, Approval.deadline <= now)
                .order_by(Approval.deadline)
                .limit(limit)
            )
        )
    if not ids:
        return 0
    sent: list[OutboxMessage] = []
    done = 0
    with session_scope() as s:
        for approval_id in ids:
            if not resolve_approval(s, approval_id, ApprovalStatus.TIMED_OUT, due_by=now):
                continue
            approval = s.get_one(Approval, approval_id)
            outcome, defaulted = timeout_outcome(approval)
            decision = _record(s, approval, outcome, DEADLINE_ACTOR, None, {}, "deadline", now, defaulted=defaulted)
            sent += _resume(s, approval, decision)
            done += 1
    outbox.publish(sent)
    return done


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
    if approval.run_id is None:  # created ahead (lookback): the wait step that takes it goes on with it
        return []
    sigs = continuation_for(approval, decision.outcome)
    payload = decision.model_dump(mode="json")
    if not sigs:
        status = _TERMINAL_FOR[decision.outcome]
        end_run(s, approval.run_id, status, result=payload)
        return []
    move_run(s, approval.run_id, RunStatus.RUNNING)
    return [outbox.enqueue(s, approval.run_id, resume_task_id(approval.id), sigs, [payload])]
