"""The writes that are one statement on PostgreSQL (a run's start, a plain wait, a journaled step's completion,
a run's end, a decision's row with its timeline entry and its continuation with the run's status) keep the guarantees
of the several statements they replace, on both databases: exactly the rows they should write, a second
delivery recognised, a compare-and-set that loses writes nothing. No worker: the engine functions are called
as the worker's signal handlers call them, against a real database (SQLite file, PostgreSQL server).

Task ids are the run's own (``<run id>.1``), as Celery's are in a hitl run: a step task id is unique across runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import hitl
from approvals.errors import LostClaim
from approvals.models import Approval, DecisionRecord, OutboxMessage, Run, RunEvent, StepRecord
from approvals.status import ApprovalStatus, EventKind, RunStatus, StepStatus
from approvals.transitions import end_run, move_run
from hitl.core.resume import resume_task_id
from hitl.core.waiting import one_statement, store_waits
from hitl.delivery import steplog
from hitl.infra.db import read_session, session_scope, statement_scope
from tests.support import point_process_at


@pytest.fixture
def engine(tmp_path: Path, database_url: str) -> Iterator[Path]:
    point_process_at(
        {
            "HITL_HOME": str(tmp_path),
            "HITL_BROKER_URL": "memory://",
            "HITL_DATABASE_URL": database_url,
            "HITL_WORKFLOW_MODULES": '["tasks", "tests.flows"]',
        }
    )
    yield tmp_path
    point_process_at({})


WAIT: dict[str, Any] = {
    "waits": [{"key": "review", "policy": {"remind_after": 60.0}, "timeout": 3600.0, "assignees": ["ann"]}],
    "join": None,
    "continuation": {"task": "tests.after", "args": [], "kwargs": {}, "options": {}},
}


def _timeline(run_id: str) -> list[EventKind]:
    with read_session() as s:
        return list(s.scalars(select(RunEvent.kind).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))


def _approvals(run_id: str) -> list[Approval]:
    with read_session() as s:
        return list(s.scalars(select(Approval).where(Approval.run_id == run_id)))


def _status(run_id: str) -> RunStatus:
    with read_session() as s:
        status = s.scalar(select(Run.status).where(Run.id == run_id))
    assert status is not None
    return status


def test_a_start_writes_its_run_its_created_entry_and_its_start_message(engine: Path) -> None:
    run_id = hitl.start("gate", {"n": 1}, idempotency_key="k-1", requester="rita")
    with read_session() as s:
        run = s.get(Run, run_id)
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.run_id == run_id)))
    assert run is not None
    assert (run.status, run.payload, run.requester, run.idempotency_key) == (RunStatus.PENDING, {"n": 1}, "rita", "k-1")
    assert run.created_at == run.updated_at
    assert _timeline(run_id) == [EventKind.CREATED]
    assert [r.task_id for r in rows] == [f"{run_id}.start"]
    assert rows[0].sent_at is not None and rows[0].attempts == 0 and rows[0].args == []
    assert rows[0].signature["tasks"][0]["task"] == "tests.prepare"
    assert hitl.start("gate", {"n": 2}, idempotency_key="k-1") == run_id  # the key's unique index still answers


def test_a_wait_delivered_twice_stores_one_approval(engine: Path) -> None:
    assert one_statement(WAIT)
    run_id = hitl.start("gate", {}, requester="rita")
    for _ in range(2):
        with statement_scope() as s:
            assert store_waits(s, run_id, f"{run_id}.1", {"subject": 1}, WAIT) == []
    (approval,) = _approvals(run_id)
    assert (approval.status, approval.step_task_id, approval.subject) == (
        ApprovalStatus.PENDING,
        f"{run_id}.1",
        {"subject": 1},
    )
    assert (approval.requester, approval.assignees, approval.key, approval.stage) == ("rita", ["ann"], "review", 0)
    assert approval.next_reminder_at is not None and approval.reminders_sent == 0
    assert approval.continuation == [WAIT["continuation"]]
    assert (approval.deadline - approval.created_at).total_seconds() == 3600
    assert _status(run_id) is RunStatus.WAITING
    assert _timeline(run_id) == [EventKind.CREATED, EventKind.WAITING]


def test_a_wait_delivered_again_after_the_decision_leaves_the_run_running(engine: Path) -> None:
    run_id = hitl.start("gate", {})
    with statement_scope() as s:
        store_waits(s, run_id, f"{run_id}.1", 1, WAIT)
    with session_scope() as s:
        assert move_run(s, run_id, RunStatus.RUNNING)  # as a decision's continuation does
    with statement_scope() as s:
        store_waits(s, run_id, f"{run_id}.1", 1, WAIT)
    assert len(_approvals(run_id)) == 1
    assert _status(run_id) is RunStatus.RUNNING
    assert _timeline(run_id) == [EventKind.CREATED, EventKind.WAITING]


def test_a_wait_of_a_cancelled_run_stores_nothing(engine: Path) -> None:
    run_id = hitl.start("gate", {})
    hitl.cancel(run_id, reason="changed my mind")
    with statement_scope() as s:
        assert store_waits(s, run_id, f"{run_id}.1", 1, WAIT) == []
    assert _approvals(run_id) == []
    assert _status(run_id) is RunStatus.CANCELLED


def test_a_run_ends_once(engine: Path) -> None:
    run_id = hitl.start("gate", {})
    with statement_scope() as s:
        assert end_run(s, run_id, RunStatus.SUCCEEDED, {"by": "test"}, result={"done": True})
    with statement_scope() as s:
        assert not end_run(s, run_id, RunStatus.FAILED, error="too late")
    with read_session() as s:
        run = s.get(Run, run_id)
        finished = s.scalar(select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == EventKind.FINISHED))
    assert run is not None and finished is not None
    assert (run.status, run.result, run.error) == (RunStatus.SUCCEEDED, {"done": True}, None)
    assert run.finished_at is not None and run.finished_at == run.updated_at <= finished.at
    assert (finished.name, finished.detail) == ("succeeded", {"by": "test"})
    assert _timeline(run_id) == [EventKind.CREATED, EventKind.FINISHED]


def test_a_journaled_step_finishes_once_with_its_entry_receipt_and_the_run_moved_on(engine: Path) -> None:
    run_id = hitl.start("gate", {})
    start = f"{run_id}.start"
    claim = steplog.check(run_id, "tests.prepare", start, receipt=start)
    assert claim.first and not claim.skip and claim.done is None
    with statement_scope() as s:
        steplog.finish(s, claim, StepStatus.FINISHED, {"prepared": True})
    with pytest.raises(LostClaim), statement_scope() as s:  # a second delivery that ran at the same time
        steplog.finish(s, claim, StepStatus.FINISHED, {"prepared": "twice"})
    with read_session() as s:
        record = s.get(StepRecord, start)
        delivered = s.scalar(select(OutboxMessage.delivered_at).where(OutboxMessage.task_id == start))
    assert record is not None and (record.status, record.result) == (StepStatus.FINISHED, {"prepared": True})
    assert delivered is not None
    assert _status(run_id) is RunStatus.RUNNING
    assert _timeline(run_id) == [EventKind.CREATED, EventKind.STEP_FINISHED]
    again = steplog.check(run_id, "tests.prepare", start)
    assert (again.done, again.result) == (StepStatus.FINISHED, {"prepared": True})

    last = steplog.check(run_id, "tests.finish", f"{run_id}.3", attempt=2)
    assert not last.first
    with statement_scope() as s:
        steplog.finish(s, last, StepStatus.FINISHED, {"all": "done"}, end_of_chain=True)
    with read_session() as s:
        run = s.get(Run, run_id)
        entry = s.scalar(select(RunEvent).where(RunEvent.task_id == f"{run_id}.3"))
    assert run is not None and (run.status, run.result) == (RunStatus.SUCCEEDED, {"all": "done"})
    assert entry is not None and entry.detail == {"attempt": 2} and entry.started_at == last.started_at
    assert _timeline(run_id) == [
        EventKind.CREATED,
        EventKind.STEP_FINISHED,
        EventKind.STEP_FINISHED,
        EventKind.FINISHED,
    ]
    assert steplog.check(run_id, "tests.after", f"{run_id}.4").skip  # the run has ended


def test_a_decision_writes_its_row_its_entry_the_run_and_its_continuation(engine: Path) -> None:
    run_id = hitl.start("gate", {})
    with statement_scope() as s:
        store_waits(s, run_id, f"{run_id}.1", {"amount": 3}, WAIT)
    (approval,) = _approvals(run_id)
    decision = hitl.approve(approval.id, actor="ann", comment="fine")
    assert decision.outcome is hitl.Outcome.APPROVED
    with read_session() as s:
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.task_id == resume_task_id(approval.id)))
        stored = s.get(DecisionRecord, approval.id)
    assert stored is not None and (stored.outcome, stored.actor, stored.comment) == ("approved", "ann", "fine")
    assert row is not None and row.signature["tasks"] == [WAIT["continuation"]]
    assert row.args[0]["outcome"] == "approved" and row.args[0]["run_id"] == run_id
    assert _status(run_id) is RunStatus.RUNNING
    assert _timeline(run_id) == [EventKind.CREATED, EventKind.WAITING, EventKind.RESOLVED]
    with pytest.raises(hitl.AlreadyDecided):
        hitl.reject(approval.id, actor="ann")
    assert _timeline(run_id) == [EventKind.CREATED, EventKind.WAITING, EventKind.RESOLVED]  # nothing more
