"""The step record on a SQLite file (no worker): what a delivery reads before its body and writes after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from approvals.models import Run
from approvals.status import RunStatus, StepStatus
from hitl.delivery import steplog
from hitl.infra.db import session_scope
from hitl.infra.ids import new_id


def pending_run() -> str:
    run_id = new_id()
    with session_scope() as s:
        s.add(Run(id=run_id, workflow="w", status=RunStatus.PENDING, payload={}))
    return run_id


def status_of(run_id: str) -> RunStatus:
    with session_scope() as s:
        status = s.scalar(select(Run.status).where(Run.id == run_id))
    assert status is not None
    return status


def replacement(task_id: str) -> tuple[list[dict[str, Any]], list[Any], str]:
    """What a replaced step sends through the outbox: a compiled canvas, its args, the outbox task id."""
    sig = {"task": "tests.after", "args": [], "kwargs": {}, "options": {"task_id": "t"}, "subtask_type": None}
    return [sig], [], task_id


def test_a_run_stays_pending_while_its_first_step_runs_and_is_running_once_it_finished(engine_env: Path) -> None:
    run_id = pending_run()
    claim = steplog.check(run_id, "first", f"{run_id}.start")
    assert claim.first and not claim.skip and claim.done is None
    assert status_of(run_id) is RunStatus.PENDING  # the check before the body wrote nothing
    with session_scope() as s:
        steplog.finish(s, claim, StepStatus.FINISHED, 1)  # Celery sends the next link itself
    assert status_of(run_id) is RunStatus.RUNNING

    second = steplog.check(run_id, "second", f"{run_id}.1")
    assert not second.first
    with session_scope() as s:
        steplog.finish(s, second, StepStatus.FINISHED, 2, end_of_chain=True)
    assert status_of(run_id) is RunStatus.SUCCEEDED


def test_a_first_step_that_ends_the_chain_takes_its_run_from_pending_to_succeeded(engine_env: Path) -> None:
    run_id = pending_run()
    claim = steplog.check(run_id, "only", f"{run_id}.start")
    with session_scope() as s:
        steplog.finish(s, claim, StepStatus.FINISHED, "done", end_of_chain=True)
    assert status_of(run_id) is RunStatus.SUCCEEDED


def test_a_second_delivery_of_a_finished_first_step_reuses_its_result_and_cannot_finish_again(
    engine_env: Path,
) -> None:
    run_id = pending_run()
    task_id = f"{run_id}.start"
    first, late = steplog.check(run_id, "first", task_id), steplog.check(run_id, "first", task_id)
    with session_scope() as s:
        steplog.finish(s, first, StepStatus.REPLACED, {"n": 1}, send=replacement(f"{run_id}.1"))
    with pytest.raises(steplog.LostClaim), session_scope() as s:  # overlapped the first delivery: rolls back
        steplog.finish(s, late, StepStatus.REPLACED, {"n": 2}, send=replacement(f"{run_id}.1"))
    again = steplog.check(run_id, "first", task_id)
    assert (again.done, again.result, again.next_task_id) == (StepStatus.REPLACED, {"n": 1}, f"{run_id}.1")
    assert status_of(run_id) is RunStatus.RUNNING
