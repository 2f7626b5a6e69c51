"""Tests of the tutorial's ``refund`` workflow: start a run, decide it, check what the run did."""

from __future__ import annotations

import pytest

import hitl
from hitl.testing import Harness

REQUEST = {"order": 1042, "customer": "ada@example.com", "amount_cents": 2599}


def test_an_approved_refund_is_paid(hitl_harness: Harness) -> None:
    run_id = hitl_harness.start("refund", REQUEST)
    approval = hitl_harness.wait_for_approval(run_id)  # the worker ran quote and reached the wait
    assert approval.subject == REQUEST  # what the approver is shown: quote's result

    hitl_harness.approve(approval.id, actor="alice", comment="arrived damaged")

    run = hitl_harness.wait_for_end(run_id)
    assert run.status is hitl.RunStatus.SUCCEEDED
    assert run.result == {"paid": True, "amount_cents": 2599, "approved_by": "alice", "payment_ref": run_id}


def test_a_rejected_refund_is_not_paid(hitl_harness: Harness) -> None:
    run_id = hitl_harness.start("refund", REQUEST)
    approval = hitl_harness.wait_for_approval(run_id)

    hitl_harness.reject(approval.id, actor="bob", reason="outside the refund window")

    run = hitl_harness.wait_for_end(run_id)
    assert run.result == {"paid": False, "outcome": "rejected", "comment": "outside the refund window"}


def test_an_undecided_refund_times_out_and_is_not_paid(hitl_harness: Harness) -> None:
    run_id = hitl_harness.start("refund", REQUEST)
    approval = hitl_harness.wait_for_approval(run_id)

    hitl_harness.expire(approval.id)  # its deadline passes now, and the sweep runs as beat would

    assert hitl_harness.wait_for_end(run_id).result == {"paid": False, "outcome": "timed_out", "comment": None}


def test_a_second_decision_is_refused(hitl_harness: Harness) -> None:
    run_id = hitl_harness.start("refund", REQUEST)
    approval = hitl_harness.wait_for_approval(run_id)
    hitl_harness.approve(approval.id, actor="alice")

    with pytest.raises(hitl.AlreadyDecided):
        hitl_harness.reject(approval.id, actor="bob", reason="too late")
