"""Tests of the tutorial's ``refund`` workflow: start a run, decide it, check what the run did."""

from __future__ import annotations

import pytest
from conftest import wait_until

import hitl

pytestmark = pytest.mark.usefixtures("hitl_services")

REQUEST = {"order": 1042, "customer": "ada@example.com", "amount_cents": 2599}


def pending_approval(run_id: str) -> hitl.ApprovalView:
    """The run's pending approval, once the worker has run ``quote`` and reached the wait."""
    return wait_until(lambda: next(iter(hitl.list_approvals(run_id=run_id)), None), what=f"run {run_id} to wait")


def finished(run_id: str) -> hitl.RunView:
    """The run, once it has finished."""
    return wait_until(lambda: (r := hitl.get_run(run_id)).finished_at and r, what=f"run {run_id} to finish")


def test_an_approved_refund_is_paid() -> None:
    run_id = hitl.start("refund", REQUEST)
    approval = pending_approval(run_id)
    assert approval.subject == REQUEST  # what the approver is shown: quote's result

    hitl.approve(approval.id, actor="alice", comment="arrived damaged")

    run = finished(run_id)
    assert run.status is hitl.RunStatus.SUCCEEDED
    assert run.result == {"paid": True, "amount_cents": 2599, "approved_by": "alice", "payment_ref": run_id}


def test_a_rejected_refund_is_not_paid() -> None:
    run_id = hitl.start("refund", REQUEST)
    approval = pending_approval(run_id)

    hitl.reject(approval.id, actor="bob", reason="outside the refund window")

    run = finished(run_id)
    assert run.result == {"paid": False, "outcome": "rejected", "comment": "outside the refund window"}


def test_a_second_decision_is_refused() -> None:
    run_id = hitl.start("refund", REQUEST)
    approval = pending_approval(run_id)
    hitl.approve(approval.id, actor="alice")

    with pytest.raises(hitl.AlreadyDecided):
        hitl.reject(approval.id, actor="bob", reason="too late")
