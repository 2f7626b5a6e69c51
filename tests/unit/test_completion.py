"""Compare-and-set rules of the completion handler, sweep and cancel, on a SQLite file (no worker)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

import hitl
from approvals.errors import AlreadyDecided, ApprovalCancelled, ApprovalExpired, ApprovalNotFound, InvalidDecision
from approvals.models import Approval, OutboxMessage, Run, utcnow
from approvals.status import ApprovalStatus, RunStatus
from hitl.core.completion import decide
from hitl.core.deadlines import sweep as sweep_deadlines
from hitl.infra.db import session_scope
from hitl.infra.ids import new_id


def waiting_run(deadline_in: float = 3600, **approval: object) -> str:
    """Insert a waiting run with one pending approval; return the approval id."""
    run_id, approval_id = new_id(), new_id()
    with session_scope() as s:
        s.add(Run(id=run_id, workflow="gate", status=RunStatus.WAITING, payload={}))
        s.flush()
        s.add(
            Approval(
                id=approval_id,
                run_id=run_id,
                key="k",
                status=ApprovalStatus.PENDING,
                step_task_id=new_id(),
                subject={"s": 1},
                assignees=[],
                deadline=utcnow() + timedelta(seconds=deadline_in),
                continuation=[dict(hitl.app.signature("tests.after", kwargs={"run_id": run_id}))],
                **approval,
            )
        )
    return approval_id


def outbox_rows() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(OutboxMessage)) or 0)


def test_decision_moves_pending_to_approved_once(engine_env: Path) -> None:
    approval_id = waiting_run()
    d = decide(approval_id, "approved", actor="alice", data={"n": 1})
    assert (d.outcome, d.subject, d.data) == (hitl.Outcome.APPROVED, {"s": 1}, {"n": 1})
    assert outbox_rows() == 1
    with pytest.raises(AlreadyDecided, match="already approved"):
        decide(approval_id, "rejected", actor="bob")
    assert outbox_rows() == 1
    assert hitl.get_approval(approval_id).decision.actor == "alice"  # type: ignore[union-attr]


def test_decision_after_the_deadline_is_refused_before_the_sweep(engine_env: Path) -> None:
    approval_id = waiting_run(deadline_in=-1)
    with pytest.raises(ApprovalExpired):
        decide(approval_id, "approved", actor="alice")
    assert hitl.get_approval(approval_id).status is ApprovalStatus.PENDING
    assert sweep_deadlines() == 1
    assert sweep_deadlines() == 0  # a second sweep (another beat) finds nothing to do
    view = hitl.get_approval(approval_id)
    assert view.status is ApprovalStatus.TIMED_OUT
    assert view.decision is not None and view.decision.outcome is hitl.Outcome.TIMED_OUT
    with pytest.raises(ApprovalExpired, match="timed out"):
        decide(approval_id, "approved", actor="alice")


def test_sweep_leaves_approvals_not_yet_due(engine_env: Path) -> None:
    due, later = waiting_run(deadline_in=-1), waiting_run(deadline_in=600)
    assert sweep_deadlines() == 1
    assert hitl.get_approval(due).status is ApprovalStatus.TIMED_OUT
    assert hitl.get_approval(later).status is ApprovalStatus.PENDING


def test_cancelled_approval_refuses_decisions(engine_env: Path) -> None:
    approval_id = waiting_run()
    run_id = hitl.get_approval(approval_id).run_id
    assert hitl.cancel(run_id) == [approval_id]
    with pytest.raises(ApprovalCancelled):
        decide(approval_id, "approved", actor="alice")
    assert hitl.get_run(run_id).status is RunStatus.CANCELLED
    assert outbox_rows() == 0


def test_bad_decisions_change_nothing(engine_env: Path) -> None:
    approval_id = waiting_run()
    with pytest.raises(ApprovalNotFound):
        decide("missing", "approved", actor="alice")
    for kwargs in (
        {"outcome": "maybe", "actor": "a"},
        {"outcome": "approved", "actor": " "},
        {"outcome": "timed_out", "actor": "a"},
    ):
        with pytest.raises(InvalidDecision):
            decide(approval_id, **kwargs)  # type: ignore[arg-type]
    assert hitl.get_approval(approval_id).status is ApprovalStatus.PENDING
    assert outbox_rows() == 0


def test_start_is_idempotent_per_key(engine_env: Path) -> None:
    first = hitl.start("gate", {}, idempotency_key="k1")
    assert hitl.start("gate", {}, idempotency_key="k1") == first
    assert hitl.start("gate", {}, idempotency_key="k2") != first
