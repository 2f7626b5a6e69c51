"""The completion handler: record a decision or a timeout and resume the run's continuation, once.

Every path (CLI, Python API, HTTP, the deadline sweep) comes through :func:`decide` or
:func:`hitl.core.deadlines.sweep`. In one transaction: the approval moves pending → approved/rejected/timed_out by
compare-and-set, the decision row is written, the run moves waiting → running and the continuation is
written to the outbox. After commit the continuation is sent. The compare-and-set is what makes a second
decision, a decision after the deadline and a decision racing the sweep lose cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approvals import tables
from approvals.errors import AlreadyDecided, ApprovalNotFound, DomainError, InvalidDecision, LinkUsed, NotAllowed
from approvals.models import Approval, OutboxMessage, UsedToken, Vote, utcnow
from approvals.policy import FAIL_DEFAULT, continuation_for, validate_decision_data
from approvals.schemas import ApprovalPolicy, Decision, Outcome, VoteView
from approvals.status import ApprovalStatus, EventKind, RunStatus
from approvals.transitions import (
    add_event,
    advance_stage,
    end_run,
    insert_with_event,
    move_run_and_insert,
    on_postgresql,
    resolve_and_record,
    resolve_approval,
    resolve_approval_row,
    touch_pending,
    why_not_pending,
)
from hitl.core import audit, groups, joins
from hitl.core.resume import (
    TERMINAL_FOR,
    decision_of,
    make_decision,
    resolved_detail,
    resume_task_id,
    vote_view,
)
from hitl.delivery import outbox
from hitl.infra.db import session_scope
from hitl.infra.jsonsafe import check_size

#: The decision row, by a Core INSERT (no ORM unit of work on the decision path).
_INSERT_DECISION = insert(tables.decisions)
_ADMIT_COLUMNS = select(
    Approval.policy, Approval.requester, Approval.assignees, Approval.status, Approval.stage, Approval.run_id
).where(Approval.id == bindparam("approval_id"))


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
        NotAllowed: ``actor`` may not decide it (see :func:`refuse`).

    One write transaction, accepted or refused: it reads what the admission needs, takes the compare-and-set
    and records the attempt in the audit log (:mod:`hitl.core.audit`), accepted or not. An attempt refused
    after a write (a schema failure, a used link) is recorded after that transaction was rolled back. The
    continuation is published right after commit.
    """
    try:
        return _decide(
            approval_id, outcome, actor=actor, comment=comment, data=data, channel=channel, link_nonce=link_nonce
        )
    except _Recorded as refused:  # recorded in the decision's own transaction
        raise refused.error from None
    except DomainError as exc:
        audit.record_refused(
            action="decide",
            actor=actor,
            channel=channel,
            reason=exc.message,
            approval_id=approval_id,
            outcome=str(outcome),
            comment=comment,
            payload={} if data is None else data,  # as an accepted decision without data
        )
        raise


def _decide(
    approval_id: str,
    outcome: Outcome | str,
    *,
    actor: str,
    comment: str | None,
    data: dict[str, Any] | None,
    channel: str,
    link_nonce: str | None,
) -> Decision:
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
    actor = actor.strip()
    data = data or {}
    check_size(data, "decision data")
    now = utcnow()
    lost: DomainError | None = None
    with session_scope() as s:  # one transaction, accepted or refused
        gate = _admit(s, approval_id, actor)
        if isinstance(gate, _Refusal):  # not theirs to decide: recorded, with the run's timeline entry
            _record_refusal(s, approval_id, gate.run_id, actor, channel, gate.reason, outcome.value, comment, data)
            lost = NotAllowed(gate.reason)
        else:
            if gate.single:
                decision = _decide_once(s, approval_id, outcome, actor, comment, data, channel, now, link_nonce)
            else:
                decision = _vote(s, gate, outcome, actor, comment, data, channel, now, link_nonce)
            run_id: str | None = None
            if isinstance(decision, DomainError):
                # The compare-and-set lost on its first write, so the transaction changed nothing: the refused
                # attempt is recorded here, in one transaction (not a rolled-back one and another for the entry).
                lost = decision
            else:
                result, run_id = decision.value, decision.approval.run_id
                sent = _resume(s, decision.approval, result) if result.settled else []
            audit.record(
                s,
                action="decide",
                actor=actor,
                channel=channel,
                accepted=lost is None,
                approval_id=approval_id,
                run_id=run_id,
                outcome=outcome.value,
                reason=None if lost is None else lost.message,
                comment=comment,
                payload=data,
            )
    if lost is not None:
        raise _Recorded(lost)
    outbox.publish(sent)
    return result


class _Recorded(Exception):
    """Carries a refusal already recorded in the audit log (:func:`decide` raises ``error``)."""

    def __init__(self, error: DomainError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class _Gate:
    """What the pre-check learned: the stage the actor votes in and how many people can vote in it."""

    approval_id: str
    stage: int
    single: bool
    quorum: int
    eligible: int | None  # people who may vote in this stage (None: anyone)
    any_rejection_rejects: bool
    stages: list[list[str]]


@dataclass(frozen=True)
class _Decided:
    approval: Approval
    value: Decision


@dataclass(frozen=True)
class _Refusal:
    """Why ``actor`` may not decide: recorded as a refused attempt (:func:`_record_refusal`)."""

    run_id: str | None
    reason: str


def _admit(s: Session, approval_id: str, actor: str) -> _Gate | _Refusal:
    """Check, in the decision's transaction and before its compare-and-set, that ``actor`` may decide
    ``approval_id``; return what the decision needs to know, or why not.

    Assignees only grow (escalation adds people), so an admission stays valid until the compare-and-set, which
    also checks the approval is pending (in the same stage). Refused: not an assignee (users or group members)
    of the current stage, or the requester of a wait that forbids it.

    Raises:
        ApprovalNotFound: no such approval.
    """
    approval = s.execute(_ADMIT_COLUMNS, {"approval_id": approval_id}).one_or_none()  # not subject, continuation
    if approval is None:
        raise ApprovalNotFound(f"no approval has id {approval_id!r}")
    policy = ApprovalPolicy.model_validate(approval.policy or {})
    if policy.forbid_requester and approval.requester == actor:
        return _Refusal(approval.run_id, f"{actor} requested this; they may not decide it")
    assignees = [str(a) for a in approval.assignees]
    if approval.status is ApprovalStatus.PENDING and not groups.is_assignee(actor, assignees, s):
        reason = f"{actor} is not among the assignees ({', '.join(assignees)})"
        return _Refusal(approval.run_id, reason + (f" of stage {approval.stage + 1}" if policy.stages else ""))
    single = policy.quorum == 1 and len(policy.stages) <= 1
    eligible = len(groups.expand(assignees, s)) if assignees and not single else None
    return _Gate(
        approval_id, approval.stage, single, policy.quorum, eligible, policy.any_rejection_rejects, policy.stages
    )


def _decide_once(
    s: Session,
    approval_id: str,
    outcome: Outcome,
    actor: str,
    comment: str | None,
    data: dict[str, Any],
    channel: str,
    now: datetime,
    link_nonce: str | None,
) -> _Decided | DomainError:
    """Decide a single-decider approval; return why not (changing nothing) when its compare-and-set lost.

    On PostgreSQL the compare-and-set, the decision row and its timeline entry are one statement
    (:func:`~approvals.transitions.resolve_and_record`); a decision that then fails its schema or its link rolls
    all three back, as it rolls back the compare-and-set alone elsewhere.
    """
    recorded = on_postgresql(s)
    if recorded:
        row = _decision_row(outcome, actor, comment, data, channel, now)
        detail = resolved_detail(approval_id, outcome, actor, comment, channel, defaulted=False)
        approval = resolve_and_record(
            s, approval_id, outcome.approval_status, before_deadline=now, decision=row, detail=detail
        )
    else:
        approval = resolve_approval_row(s, approval_id, outcome.approval_status, before_deadline=now)
    if approval is None:
        return why_not_pending(s, approval_id, now)
    validate_decision_data(approval.decision_schema, data, outcome)  # raising rolls the CAS back
    if link_nonce is not None:
        _use_link(s, approval_id, link_nonce, actor)
    if recorded:
        return _Decided(approval, make_decision(approval, outcome, actor=actor, comment=comment, data=data, at=now))
    return _Decided(approval, _record(s, approval, outcome, actor, comment, data, channel, now, defaulted=False))


def _vote(
    s: Session,
    gate: _Gate,
    outcome: Outcome,
    actor: str,
    comment: str | None,
    data: dict[str, Any],
    channel: str,
    now: datetime,
    link_nonce: str | None,
) -> _Decided | DomainError:
    """Record one vote; settle the approval when the votes decide it (quorum reached, a rejection, or the
    quorum out of reach), or move it to the next stage of a sequential sign-off. Return why not (changing
    nothing) when the approval is no longer pending in that stage."""
    approval_id = gate.approval_id
    # Lock the row (a no-op UPDATE) while checking it is still pending, in time and in the same stage: votes
    # on one approval then count one at a time, and the vote that settles it is the only one that can.
    if not touch_pending(s, approval_id, stage=gate.stage, before_deadline=now):
        return why_not_pending(s, approval_id, now, stage=gate.stage)
    approval = s.get_one(Approval, approval_id)
    validate_decision_data(approval.decision_schema, data, outcome)
    if link_nonce is not None:
        _use_link(s, approval_id, link_nonce, actor)
    s.add(
        Vote(
            approval_id=approval_id,
            stage=gate.stage,
            actor=actor,
            outcome=outcome.value,
            data=data,
            comment=comment,
            channel=channel,
            at=now,
        )
    )
    try:
        s.flush()
    except IntegrityError:
        raise AlreadyDecided(f"{actor} already voted on approval {approval_id}") from None
    votes = [vote_view(v) for v in s.scalars(select(Vote).where(Vote.approval_id == approval_id).order_by(Vote.id))]
    here = [v for v in votes if v.stage == gate.stage]
    approvals = sum(v.outcome is Outcome.APPROVED for v in here)
    rejections = len(here) - approvals
    settled: Outcome | None = None
    advanced_to: int | None = None
    if rejections and (
        gate.any_rejection_rejects or (gate.eligible is not None and gate.eligible - rejections < gate.quorum)
    ):
        settled = Outcome.REJECTED
    elif approvals >= gate.quorum and gate.stage + 1 < len(gate.stages):
        advanced_to = gate.stage + 1
        advance_stage(s, approval_id, gate.stage, gate.stages[advanced_to])
    elif approvals >= gate.quorum:
        settled = Outcome.APPROVED
    _event(s, approval, EventKind.VOTED, actor, channel, outcome, gate.stage, advanced_to=advanced_to)
    if settled is None:  # the vote counted; the approval is still pending (perhaps in its next stage)
        unsettled = make_decision(
            approval, outcome, actor=actor, comment=comment, data=data, at=now, settled=False, votes=votes
        )
        return _Decided(approval, unsettled)
    if not resolve_approval(s, approval_id, settled.approval_status, before_deadline=now):
        raise why_not_pending(s, approval_id, now)
    value = _record(s, approval, settled, actor, comment, data, channel, now, defaulted=False, votes=votes)
    return _Decided(approval, value)


def _event(
    s: Session,
    approval: Approval,
    kind: EventKind,
    actor: str,
    channel: str,
    outcome: Outcome,
    stage: int,
    advanced_to: int | None = None,
) -> None:
    if approval.run_id is None:
        return
    detail: dict[str, Any] = {
        "approval_id": approval.id,
        "actor": actor,
        "channel": channel,
        "outcome": outcome.value,
        "stage": stage,
    }
    if advanced_to is not None:
        detail["advanced_to"] = advanced_to
    add_event(s, run_id=approval.run_id, kind=kind, name=approval.key, detail=detail)


def refuse(
    approval_id: str,
    *,
    actor: str,
    channel: str,
    reason: str,
    outcome: str | None = None,
    comment: str | None = None,
    payload: Any = None,
) -> NotAllowed:
    """Record a refused decision attempt on ``approval_id``; return the error to raise.

    The attempt goes to the run's timeline and, with ``outcome``, ``comment`` and the hash of ``payload``
    (the decision data) if given, to the audit log. Nothing else changes: the approval stays as it was.
    Used when a caller without the right to decide tries to (an API key without the ``decide`` scope, a
    token made for another approval, someone not among the assignees).

    Raises:
        ApprovalNotFound: no approval has that id (recorded in the audit log only).
    """
    with session_scope() as s:
        found = s.execute(select(Approval.run_id).where(Approval.id == approval_id)).one_or_none()
        missing = f"no approval has id {approval_id!r}" if found is None else None
        run_id = found[0] if found is not None else None
        _record_refusal(s, approval_id, run_id, actor, channel, missing or reason, outcome, comment, payload)
    if missing:
        raise ApprovalNotFound(missing)
    return NotAllowed(reason)


def _record_refusal(
    s: Session,
    approval_id: str,
    run_id: str | None,
    actor: str,
    channel: str,
    reason: str,
    outcome: str | None,
    comment: str | None,
    payload: Any,
) -> None:
    """Add a refused attempt to ``run_id``'s timeline (when it has one: an approval created ahead has none
    until a run takes it) and to the audit log, in ``s``'s transaction."""
    if run_id is not None:
        add_event(
            s,
            run_id=run_id,
            kind=EventKind.REFUSED,
            name=approval_id,
            detail={"approval_id": approval_id, "actor": actor, "channel": channel, "reason": reason},
        )
    audit.record(
        s,
        action="decide",
        actor=actor,
        channel=channel,
        accepted=False,
        approval_id=approval_id,
        run_id=run_id,
        outcome=outcome,
        reason=reason,
        comment=comment,
        payload=payload,
    )


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
    votes: list[VoteView] | None = None,
) -> Decision:
    row = {"approval_id": approval.id, **_decision_row(outcome, actor, comment, data, channel, now)}
    if approval.run_id is None:
        s.execute(_INSERT_DECISION, row)
    else:  # the decision and its timeline entry: one statement on PostgreSQL
        detail = resolved_detail(approval.id, outcome, actor, comment, channel, defaulted=defaulted)
        insert_with_event(s, tables.decisions, row, approval.run_id, EventKind.RESOLVED, approval.key, detail)
    return make_decision(
        approval, outcome, actor=actor, comment=comment, data=data, at=now, defaulted=defaulted, votes=votes
    )


def _decision_row(
    outcome: Outcome,
    actor: str,
    comment: str | None,
    data: dict[str, Any],
    channel: str,
    now: datetime,
) -> dict[str, Any]:
    """The ``hitl_decisions`` columns of a decision, but ``approval_id``."""
    return {
        "outcome": outcome.value,
        "data": data,
        "actor": actor,
        "comment": comment,
        "channel": channel,
        "decided_at": now,
    }


def _resume(s: Session, approval: Approval, decision: Decision) -> list[OutboxMessage]:
    """Write the continuation for ``decision`` to the outbox (or end the run if there is none); an approval of a
    parallel wait goes on only with its group (:mod:`hitl.core.joins`)."""
    if joins.is_joined(approval):
        return joins.settle(s, approval, decision.outcome, decision_of)
    sigs = continuation_of(s, approval, decision)
    if not sigs:
        return []
    assert approval.run_id is not None
    row = outbox.new_row(
        approval.run_id, resume_task_id(approval.id), sigs, [decision.model_dump(mode="json")], utcnow()
    )
    move_run_and_insert(s, approval.run_id, RunStatus.RUNNING, tables.outbox, row)  # one statement on PostgreSQL
    return [OutboxMessage(**row)]


def continuation_of(s: Session, approval: Approval, decision: Decision) -> list[Any]:
    """Return the signatures to resume for a settled ``decision``; when there are none, end the run here.

    Empty for an approval no run has taken yet (created ahead), and for a ``"failed"`` default at the
    deadline (the run fails).
    """
    if approval.run_id is None:  # created ahead (lookback): the wait step that takes it goes on with it
        return []
    payload = decision.model_dump(mode="json")
    if decision.outcome is Outcome.TIMED_OUT and approval.timeout_default == FAIL_DEFAULT:
        end_run(s, approval.run_id, RunStatus.FAILED, result=payload, error="the approval's deadline passed")
        return []
    sigs = continuation_for(approval, decision.outcome)
    if not sigs:
        end_run(s, approval.run_id, TERMINAL_FOR[decision.outcome], result=payload)
    return sigs
