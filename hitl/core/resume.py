"""What a settled approval resumes its run with: the :class:`~approvals.schemas.Decision` a continuation receives,
its timeline detail and the continuation's task id. Shared by decisions (:mod:`hitl.core.completion`), the deadline
sweep (:mod:`hitl.core.deadlines`) and parallel waits (:mod:`hitl.core.joins`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from approvals.errors import InvalidTransition
from approvals.models import Approval, Vote
from approvals.schemas import Decision, Outcome, VoteView
from approvals.status import RunStatus

#: Actor recorded on decisions made by the deadline sweep.
DEADLINE_ACTOR = "hitl:deadline"
#: The run status a settled approval ends its run with when nothing follows it.
TERMINAL_FOR = {
    Outcome.APPROVED: RunStatus.SUCCEEDED,
    Outcome.REJECTED: RunStatus.REJECTED,
    Outcome.TIMED_OUT: RunStatus.TIMED_OUT,
}


def vote_view(v: Vote) -> VoteView:
    return VoteView.model_validate(v, from_attributes=True)


def make_decision(
    approval: Approval,
    outcome: Outcome,
    *,
    actor: str,
    comment: str | None,
    data: dict[str, Any],
    at: datetime,
    defaulted: bool = False,
    settled: bool = True,
    votes: list[VoteView] | None = None,
) -> Decision:
    """Return the :class:`Decision` on ``approval`` that a continuation receives (``at``: when it was made)."""
    return Decision(
        approval_id=approval.id,
        run_id=approval.run_id,
        key=approval.key,
        outcome=outcome,
        subject=approval.subject,
        data=data,
        actor=actor,
        comment=comment,
        decided_at=at,
        defaulted=defaulted,
        settled=settled,
        votes=votes or [],
    )


def resolved_detail(
    approval_id: str, outcome: Outcome, actor: str, comment: str | None, channel: str, *, defaulted: bool
) -> dict[str, Any]:
    """Return the detail of approval ``approval_id``'s ``input_resolved`` timeline entry (the live event's payload)."""
    return {
        "approval_id": approval_id,
        "outcome": outcome.value,
        "actor": actor,
        "comment": comment,
        "channel": channel,
        "defaulted": defaulted,
    }


def resume_task_id(approval_id: str) -> str:
    """The (deterministic) task id of the first continuation step of ``approval_id``."""
    return f"{approval_id}.resume"


def decision_of(approval: Approval) -> Decision:
    """Return the :class:`Decision` recorded for a resolved ``approval`` (as its continuation receives it).

    Raises:
        InvalidTransition: the approval has no decision (pending, or cancelled).
    """
    d = approval.decision
    if d is None:
        raise InvalidTransition(f"approval {approval.id} is {approval.status.value}; it has no decision")
    return make_decision(
        approval,
        Outcome(d.outcome),
        actor=d.actor,
        comment=d.comment,
        data=d.data,
        at=d.decided_at,
        defaulted=d.actor == DEADLINE_ACTOR and approval.timeout_default is not None,
        votes=[vote_view(v) for v in approval.votes],
    )
