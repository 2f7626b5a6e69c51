"""A run pauses at its wait step and resumes with the decision: approve, reject, timeout, cancel, errors.

Real processes: the embedded Redis server, `celery worker`, `celery beat`, and the `hitl` CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import hitl
from approvals.status import ApprovalStatus, RunStatus
from tests.flows import effects
from tests.support import ROOT, Stack, wait_for

pytestmark = pytest.mark.integration


def start_gate(stack: Stack, **payload: object) -> tuple[str, str]:
    """Start a `gate` run from the CLI; return (run id, pending approval id)."""
    res = stack.cli("start", "gate", "--payload", json.dumps(payload), "--json")
    assert res.code == 0, res.err
    run_id = res.json()["run_id"]
    approval = wait_for(lambda: hitl.list_approvals(run_id=run_id), what="the run's approval")[0]
    assert approval.status is ApprovalStatus.PENDING
    assert hitl.get_run(run_id).status is RunStatus.WAITING
    return run_id, approval.id


def final(run_id: str, timeout: float = 30) -> hitl.RunView:
    return wait_for(lambda: (r := hitl.get_run(run_id)).status.terminal and r, timeout, f"run {run_id} to finish")


def test_approve_resumes_the_continuation_with_the_decision(stack: Stack) -> None:
    run_id, approval_id = start_gate(stack, note="approve me")
    assert effects(run_id, "after") == []  # nothing past the wait ran while waiting

    res = stack.cli("approve", approval_id, "--by", "alice", "--comment", "ok", "--data", '{"priority": 2}')
    assert res.code == 0, res.err

    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert run.result == "done"
    [got] = effects(run_id, "after")
    assert got.detail["outcome"] == "approved"
    assert got.detail["actor"] == "alice"
    assert got.detail["comment"] == "ok"
    assert got.detail["data"] == {"priority": 2}
    assert got.detail["subject"] == {"prepared": {"note": "approve me"}}
    assert len(effects(run_id, "finish")) == 1
    kinds = [e.kind.value for e in run.timeline]
    assert kinds == [
        "created",
        "step_finished",
        "waiting_for_input",
        "input_resolved",
        "step_finished",
        "step_finished",
        "run_finished",
    ]


def test_reject_resumes_with_the_rejection(stack: Stack) -> None:
    run_id, approval_id = start_gate(stack)
    res = stack.cli("reject", approval_id, "--by", "bob", "--reason", "needs sources")
    assert res.code == 0, res.err
    run = final(run_id)
    assert run.status is RunStatus.REJECTED
    assert run.error == "needs sources"
    [got] = effects(run_id, "after")
    assert (got.detail["outcome"], got.detail["actor"]) == ("rejected", "bob")
    assert effects(run_id, "finish") == []


def test_declared_on_reject_continuation_runs_instead(stack: Stack) -> None:
    run_id, approval_id = start_gate(stack, on_reject=True)
    assert stack.cli("reject", approval_id, "--by", "bob", "--reason", "no").code == 0
    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert run.result == "handled rejection"
    assert len(effects(run_id, "on_reject")) == 1
    assert effects(run_id, "after") == []


def test_deadline_times_out_through_beat_and_a_late_decision_is_refused(stack: Stack) -> None:
    run_id, approval_id = start_gate(stack, timeout="1s")
    run = final(run_id, timeout=30)
    assert run.status is RunStatus.TIMED_OUT
    [got] = effects(run_id, "after")
    assert got.detail["outcome"] == "timed_out"
    assert got.detail["actor"] == "hitl:deadline"

    res = stack.cli("approve", approval_id, "--by", "alice")
    assert res.code == 1
    assert "timed out" in res.err
    assert "Traceback" not in res.err
    view = hitl.get_approval(approval_id)
    assert view.status is ApprovalStatus.TIMED_OUT
    assert view.decision is not None and view.decision.actor == "hitl:deadline"


def test_declared_default_applies_at_the_deadline(stack: Stack) -> None:
    run_id, _ = start_gate(stack, timeout="1s", default="approved")
    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED
    [got] = effects(run_id, "after")
    assert got.detail["outcome"] == "approved"
    assert got.detail["defaulted"] is True


def test_wait_without_continuation_ends_the_run_with_the_outcome(stack: Stack) -> None:
    res = stack.cli("start", "wait-last", "--payload", "{}", "--json")
    run_id = res.json()["run_id"]
    approval = wait_for(lambda: hitl.list_approvals(run_id=run_id), what="approval")[0]
    assert stack.cli("reject", approval.id, "--by", "bob", "--reason", "no").code == 0
    assert final(run_id).status is RunStatus.REJECTED


def test_unknown_approval_and_run_ids_are_clear_errors(stack: Stack) -> None:
    for args in (
        ["approve", "nope", "--by", "a"],
        ["reject", "nope", "--by", "a", "--reason", "x"],
        ["approvals", "show", "nope"],
        ["runs", "show", "nope"],
        ["runs", "cancel", "nope"],
    ):
        res = stack.cli(*args)
        assert res.code == 1, args
        assert res.err.startswith("error: no ") and "'nope'" in res.err, res.err
        assert "Traceback" not in res.err


def test_malformed_data_changes_nothing(stack: Stack) -> None:
    run_id, approval_id = start_gate(stack)
    for bad in ('{"unclosed": ', "[1, 2]", "@/nonexistent/file.json"):
        res = stack.cli("approve", approval_id, "--by", "alice", "--data", bad)
        assert res.code == 2, (bad, res.err)
        assert res.err.startswith("error: ") and "--data" in res.err, res.err
    view = hitl.get_approval(approval_id)
    assert view.status is ApprovalStatus.PENDING and view.decision is None
    assert hitl.get_run(run_id).status is RunStatus.WAITING
    # Still decidable afterwards.
    assert stack.cli("approve", approval_id, "--by", "alice").code == 0
    assert final(run_id).status is RunStatus.SUCCEEDED


def test_second_decision_is_refused_and_changes_nothing(stack: Stack) -> None:
    run_id, approval_id = start_gate(stack)
    assert stack.cli("approve", approval_id, "--by", "alice").code == 0
    res = stack.cli("reject", approval_id, "--by", "bob", "--reason", "late")
    assert res.code == 1
    assert "already approved" in res.err
    final(run_id)
    view = hitl.get_approval(approval_id)
    assert view.status is ApprovalStatus.APPROVED
    assert view.decision is not None and view.decision.actor == "alice"
    assert len(effects(run_id, "after")) == 1


def test_cancel_cancels_pending_approvals_and_later_decisions_fail(stack: Stack) -> None:
    run_id, approval_id = start_gate(stack)
    res = stack.cli("runs", "cancel", run_id, "--reason", "obsolete", "--json")
    assert res.code == 0, res.err
    assert res.json()["cancelled_approvals"] == [approval_id]
    res = stack.cli("approve", approval_id, "--by", "alice")
    assert res.code == 1
    assert "cancelled" in res.err
    assert hitl.get_run(run_id).status is RunStatus.CANCELLED
    assert hitl.get_approval(approval_id).status is ApprovalStatus.CANCELLED
    assert effects(run_id, "after") == []
    again = stack.cli("runs", "cancel", run_id)
    assert again.code == 1 and "already finished" in again.err


def test_start_twice_with_one_idempotency_key_gives_one_run(stack: Stack) -> None:
    first = stack.cli("start", "gate", "--payload", "{}", "--idempotency-key", "order-77", "--json")
    second = stack.cli("start", "gate", "--payload", "{}", "--idempotency-key", "order-77", "--json")
    assert first.code == second.code == 0
    assert first.json()["run_id"] == second.json()["run_id"]
    run_id = first.json()["run_id"]
    wait_for(lambda: hitl.list_approvals(run_id=run_id), what="approval")
    assert [r.id for r in hitl.list_runs(workflow="gate", limit=10_000) if r.idempotency_key == "order-77"] == [run_id]
    assert len(effects(run_id, "prepare")) == 1


def test_concurrent_completions_one_wins(stack: Stack) -> None:
    run_id, approval_id = start_gate(stack)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hitl", verb, approval_id, "--by", who, *extra],
            cwd=ROOT,
            env={**os.environ, **stack.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for verb, who, extra in (("approve", "alice", []), ("reject", "bob", ["--reason", "race"]))
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    results = [(p.returncode, err) for p, (_, err) in zip(procs, outputs, strict=True)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser_err = next(err for code, err in results if code == 1)
    assert "already" in loser_err
    final(run_id)
    assert len(effects(run_id, "after")) == 1
    view = hitl.get_approval(approval_id)
    assert view.decision is not None
    assert view.status.value == {"alice": "approved", "bob": "rejected"}[view.decision.actor]
