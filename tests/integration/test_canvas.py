"""Plain Celery tasks and Celery's canvas in workflows: real worker and beat processes, SQLite and PostgreSQL.

The workflows (tests/flows.py) use the team's own tasks — ``@shared_task`` and ``@app.task`` without ``run_id``
— beside journaled steps, groups and chords before and after waits, and parallel waits.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

import hitl
from approvals.models import Approval, Run, StepRecord
from approvals.status import ApprovalStatus, RunStatus
from hitl.infra.db import session_scope
from tests.flows import EffectRow, create_test_tables, effects
from tests.support import Stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _tables(stack: Stack) -> None:
    """The test tables exist before group members record into them at once (CREATE TABLE would race)."""
    create_test_tables()


def start(stack: Stack, workflow: str, **payload: Any) -> str:
    res = stack.cli("start", workflow, "--payload", json.dumps(payload), "--json")
    assert res.code == 0, res.err
    return str(res.json()["run_id"])


def pending(run_id: str, count: int = 1) -> list[hitl.ApprovalView]:
    def ready() -> list[hitl.ApprovalView] | None:
        found = hitl.list_approvals(run_id=run_id)
        return found if len(found) == count else None

    return wait_for(ready, what=f"{count} pending approval(s) of run {run_id}")


def final(run_id: str, timeout: float = 40) -> hitl.RunView:
    return wait_for(lambda: (r := hitl.get_run(run_id)).status.terminal and r, timeout, f"run {run_id} to finish")


def test_plain_tasks_around_a_wait_approve(stack: Stack) -> None:
    run_id = start(stack, "plain", topic="tides")
    [approval] = pending(run_id)
    assert approval.subject == {"draft": "about tides"}
    assert hitl.get_run(run_id).status is RunStatus.WAITING
    assert stack.cli("approve", approval.id, "--by", "alice", "--comment", "ok").code == 0
    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED
    [got] = effects(run_id, "decided")
    assert got.detail["outcome"] == "approved" and got.detail["actor"] == "alice"
    assert got.detail["subject"] == {"draft": "about tides"}
    assert run.result == {"after": "decided", "got": got.detail}
    # hitl wrote nothing for the plain tasks: no step records, no step timeline entries
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(StepRecord).where(StepRecord.run_id == run_id)) == 0
    kinds = [e.kind.value for e in run.timeline]
    assert kinds == ["created", "waiting_for_input", "input_resolved", "run_finished"]


def test_plain_tasks_reject_and_timeout(stack: Stack) -> None:
    rejected = start(stack, "plain", topic="a")
    [approval] = pending(rejected)
    assert stack.cli("reject", approval.id, "--by", "bob", "--reason", "no").code == 0
    assert final(rejected).status is RunStatus.SUCCEEDED  # the continuation ran, with the rejection
    assert effects(rejected, "decided")[0].detail["outcome"] == "rejected"

    timed = start(stack, "plain", topic="b", timeout="1s")
    pending(timed)
    run = final(timed)
    assert effects(timed, "decided")[0].detail["outcome"] == "timed_out"
    assert run.status is RunStatus.SUCCEEDED


def test_plain_workflow_without_a_wait_records_only_its_start_and_end(stack: Stack) -> None:
    run_id = start(stack, "plain-nowait", topic="x")
    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert [e.kind.value for e in run.timeline] == ["created", "run_finished"]
    assert [e.step for e in effects(run_id)] == ["one", "two"]
    assert run.result["after"] == "two"


def test_a_group_before_a_wait_is_its_subject(stack: Stack) -> None:
    run_id = start(stack, "group-subject")
    [approval] = pending(run_id)
    assert sorted(p["part"] for p in approval.subject) == [0, 1, 2]
    hitl.approve(approval.id, actor="alice")
    assert final(run_id).status is RunStatus.SUCCEEDED
    assert len(effects(run_id, "decided")) == 1


def test_a_chord_feeds_the_subject(stack: Stack) -> None:
    run_id = start(stack, "chord-subject", topic="c")
    [approval] = pending(run_id)
    assert approval.subject == {"joined": [0, 1, 2]}
    hitl.approve(approval.id, actor="alice")
    assert final(run_id).status is RunStatus.SUCCEEDED


def test_a_group_after_the_decision_ends_the_run_when_all_of_it_ran(stack: Stack) -> None:
    run_id = start(stack, "group-after", topic="g")
    [approval] = pending(run_id)
    hitl.approve(approval.id, actor="alice")
    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert sorted(e.step for e in effects(run_id)) == ["notify-a", "notify-b"]
    assert isinstance(run.result, list), [(e.kind.value, e.name, e.detail) for e in run.timeline]
    assert sorted(r["after"] for r in run.result) == ["notify-a", "notify-b"]


def test_parallel_waits_both_approve_resumes_once_with_both_decisions(stack: Stack) -> None:
    run_id = start(stack, "parallel", topic="p")
    approvals = pending(run_id, 2)
    by_key = {a.key: a for a in approvals}
    assert set(by_key) == {"legal", "finance"}
    assert by_key["legal"].assignees == ["legal"]
    hitl.approve(by_key["legal"].id, actor="legal")
    assert hitl.get_run(run_id).status is RunStatus.WAITING  # one settled, the other still open
    assert effects(run_id, "signed") == []
    hitl.approve(by_key["finance"].id, actor="finance")
    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED
    [signed] = effects(run_id, "signed")
    assert [d["key"] for d in signed.detail] == ["legal", "finance"]
    assert [d["outcome"] for d in signed.detail] == ["approved", "approved"]


def test_parallel_waits_one_rejects_settles_at_once_and_cancels_the_other(stack: Stack) -> None:
    run_id = start(stack, "parallel", topic="p")
    by_key = {a.key: a for a in pending(run_id, 2)}
    hitl.reject(by_key["finance"].id, actor="finance", reason="over budget")
    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED  # the continuation received the rejection and ended the run
    [signed] = effects(run_id, "signed")
    assert signed.detail[0] is None  # legal's approval was cancelled by the rejection
    assert signed.detail[1]["outcome"] == "rejected"
    assert hitl.get_approval(by_key["legal"].id).status is ApprovalStatus.CANCELLED
    with pytest.raises(hitl.ApprovalCancelled):
        hitl.approve(by_key["legal"].id, actor="legal")


def test_a_task_no_worker_has_fails_its_run_with_the_reason(stack: Stack) -> None:
    run = final(start(stack, "broken-unknown-task", topic="u"))
    assert run.status is RunStatus.FAILED
    assert "tests.no_such_task" in (run.error or "")


def test_a_chain_that_cannot_bind_its_arguments_is_refused_and_leaves_no_run(stack: Stack) -> None:
    with session_scope() as s:
        before = s.scalar(select(func.count()).select_from(Run))
    for workflow, words in (("broken-args", "cannot be called"), ("broken-shape", "cannot stand inside a group")):
        res = stack.cli("start", workflow, "--payload", '{"topic": "b"}')
        assert res.code == 2, res.err
        assert words in res.err and "Traceback" not in res.err
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == before


def test_a_plain_task_failing_after_its_retries_fails_its_run(stack: Stack) -> None:
    run_id = start(stack, "plain-fails", topic="f")
    run = final(run_id)
    assert run.status is RunStatus.FAILED
    assert "payment provider said no" in (run.error or "")
    assert len(effects(run_id, "plain_fails")) == 3  # the first attempt and two retries


def test_a_mixed_workflow_runs_every_journaled_step_once(stack: Stack) -> None:
    create_test_tables()
    run_id = start(stack, "mixed", topic="m")
    [first] = pending(run_id)
    assert sorted(p["part"] for p in first.subject) == [0, 1]
    hitl.approve(first.id, actor="alice")
    both = wait_for(
        lambda: [a for a in hitl.list_approvals(run_id=run_id) if a.status is ApprovalStatus.PENDING] or None,
        what="the parallel wait",
    )
    wait_for(lambda: len(hitl.list_approvals(run_id=run_id)) == 2, what="both parallel approvals")
    for a in hitl.list_approvals(run_id=run_id):
        hitl.approve(a.id, actor="alice")
    assert both
    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED
    with session_scope() as s:
        rows = s.execute(
            select(EffectRow.label, func.count()).where(EffectRow.run_id == run_id).group_by(EffectRow.label)
        ).all()
        approvals = s.scalar(select(func.count()).select_from(Approval).where(Approval.run_id == run_id))
    assert dict(rows) == {"j1": 1, "j2": 1, "j3": 1}
    assert approvals == 3
    assert sorted(e.step for e in effects(run_id)) == ["note-a", "note-b"]
