"""Parallel waits: a group of waits resumes its run once, when all its approvals are settled.

Each approval of a parallel wait carries :class:`~approvals.schemas.WaitJoin` in its policy (the group's id, its
place, the group's size, the settle rule). When one of them is settled (by a person, a quorum or the deadline),
:func:`settle` runs in the same transaction:

1. It locks the run with a no-op compare-and-set on ``waiting`` (``UPDATE hitl_runs ... WHERE status =
   'waiting'``): deciders of sibling approvals go one at a time from here (PostgreSQL's row lock; SQLite has one
   writer), so the last of two concurrent decisions sees the other's, and a run that already went on loses.
2. The group is settled when no sibling is pending — or at once on a rejection when ``any_rejection_rejects``
   (the default; the pending siblings are then cancelled), or on a timeout whose default is ``"failed"`` (the
   run fails).
3. The run goes on with the list of every sibling's :class:`~approvals.schemas.Decision`, in the group's order
   (None for one cancelled by the early settlement), through the outbox — or ends, when nothing follows, as
   ``rejected`` if any was rejected, else ``timed_out`` if any timed out, else ``succeeded``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from approvals.models import Approval, OutboxMessage, Run, utcnow
from approvals.policy import FAIL_DEFAULT
from approvals.schemas import Decision, Outcome
from approvals.status import ApprovalStatus, EventKind, RunStatus
from approvals.transitions import add_event, cancel_pending_approvals, end_run, move_run, note_locked_run, rowcount
from hitl.delivery import outbox

_TERMINAL = {
    Outcome.APPROVED: RunStatus.SUCCEEDED,
    Outcome.REJECTED: RunStatus.REJECTED,
    Outcome.TIMED_OUT: RunStatus.TIMED_OUT,
}


def is_joined(approval: Approval) -> bool:
    """Whether ``approval`` belongs to a parallel wait."""
    return bool((approval.policy or {}).get("join"))


def resume_task_id(join_id: str) -> str:
    """The outbox task id of a parallel wait's continuation (one per group)."""
    return f"{join_id}.resume"


def settle(
    s: Session, approval: Approval, outcome: Outcome, decision_of: Callable[[Approval], Decision[Any]]
) -> list[OutboxMessage]:
    """In ``s``, after ``approval`` was settled with ``outcome`` (its decision row written): settle its parallel
    wait if this was the last open approval of the group, or a rejection that settles it early.

    Args:
        s: the deciding transaction.
        approval: the settled approval (of a parallel wait).
        outcome: its outcome.
        decision_of: returns the recorded decision of a settled approval (:func:`hitl.core.resume.decision_of`).

    Returns:
        The continuation's outbox row to publish after commit, or nothing (the group is still open, or the run
        ended, or it had already gone on).
    """
    join = approval.policy["join"]
    run_id = approval.run_id
    assert run_id is not None
    locked = update(Run).where(Run.id == run_id, Run.status == RunStatus.WAITING).values(updated_at=utcnow())
    if rowcount(s.execute(locked)) != 1:
        return []  # cancelled, ended, or already resumed by a sibling
    note_locked_run(s, run_id)
    siblings = [
        a
        for a in s.scalars(select(Approval).where(Approval.run_id == run_id).execution_options(populate_existing=True))
        if (a.policy or {}).get("join", {}).get("id") == join["id"]
    ]
    pending = [a for a in siblings if a.status is ApprovalStatus.PENDING]
    if outcome is Outcome.TIMED_OUT and approval.timeout_default == FAIL_DEFAULT:
        _cancel_rest(s, run_id, pending)
        end_run(s, run_id, RunStatus.FAILED, error=f"the deadline of approval {approval.key!r} passed")
        return []
    early = outcome is Outcome.REJECTED and join.get("any_rejection_rejects", True)
    if pending and not early:
        return []
    _cancel_rest(s, run_id, pending)
    by_index: dict[int, Decision[Any] | None] = {}
    for a in siblings:
        settled = a.status not in (ApprovalStatus.PENDING, ApprovalStatus.CANCELLED)
        by_index[int(a.policy["join"]["index"])] = decision_of(a) if settled else None
    decisions = [by_index.get(i) for i in range(int(join["size"]))]
    outcomes = {d.outcome for d in decisions if d is not None}
    overall = next((o for o in (Outcome.REJECTED, Outcome.TIMED_OUT) if o in outcomes), Outcome.APPROVED)
    payload = [d.model_dump(mode="json") if d is not None else None for d in decisions]
    if not approval.continuation:
        end_run(s, run_id, _TERMINAL[overall], result=payload)
        return []
    move_run(s, run_id, RunStatus.RUNNING)
    return [outbox.enqueue(s, run_id, resume_task_id(join["id"]), approval.continuation, [payload])]


def _cancel_rest(s: Session, run_id: str, pending: list[Approval]) -> None:
    if not pending:
        return
    for approval_id in cancel_pending_approvals(s, run_id):
        add_event(
            s,
            run_id=run_id,
            kind=EventKind.RESOLVED,
            name=approval_id,
            detail={"approval_id": approval_id, "outcome": "cancelled", "reason": "the parallel wait was settled"},
        )
