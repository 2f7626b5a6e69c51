"""The deadline sweep in bulk, in-process on a real SQLite file and a real PostgreSQL database (no worker).

More approvals come due than one statement's chunk (``approvals.transitions.CHUNK``), so every set-based
statement of the sweep runs more than once. The timeline rows get their ids before they are inserted
(``approvals.transitions.insert_events``); these tests check the ids the database holds against the ids of
the live events published after commit, and that single-row inserts afterwards continue after them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

import hitl
from approvals.models import Approval, OutboxMessage, Run, RunEvent, utcnow
from approvals.status import ApprovalStatus, EventKind, RunStatus
from approvals.transitions import CHUNK, add_event
from hitl.core.deadlines import sweep as sweep_deadlines
from hitl.infra import events
from hitl.infra.db import session_scope
from hitl.infra.ids import new_id
from tests.support import point_process_at

DUE = CHUNK + CHUNK // 2  # half resume a continuation, half end their run


@pytest.fixture
def engine_at(database_url: str, tmp_path: Path) -> Iterator[None]:
    point_process_at(
        {
            "HITL_HOME": str(tmp_path),
            "HITL_DATABASE_URL": database_url,
            "HITL_BROKER_URL": "memory://",
            "HITL_WORKFLOW_MODULES": '["tasks", "tests.flows"]',
        }
    )
    yield
    point_process_at({})


def insert_waiting(count: int, deadline_in: float, continuation: bool) -> list[str]:
    """Insert ``count`` waiting runs, each with one pending approval; return the run ids."""
    run_ids = [new_id() for _ in range(count)]
    now = utcnow()
    with session_scope() as s:
        s.execute(
            insert(Run), [{"id": r, "workflow": "gate", "status": RunStatus.WAITING, "payload": {}} for r in run_ids]
        )
        s.execute(
            insert(Approval),
            [
                {
                    "id": new_id(),
                    "run_id": r,
                    "key": "k",
                    "status": ApprovalStatus.PENDING,
                    "step_task_id": new_id(),
                    "subject": {"run": r},
                    "assignees": [],
                    "deadline": now + timedelta(seconds=deadline_in),
                    "continuation": [dict(hitl.app.signature("tests.after", kwargs={"run_id": r}))]
                    if continuation
                    else [],
                }
                for r in run_ids
            ],
        )
    return run_ids


def test_a_sweep_of_more_than_a_chunk_records_every_timeout_with_the_ids_it_publishes(
    engine_at: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    resumed = insert_waiting(DUE // 2, -1, continuation=True)
    ended = insert_waiting(DUE - DUE // 2, -1, continuation=False)
    (later,) = insert_waiting(1, 3600, continuation=True)
    with session_scope() as s:  # an earlier timeline row: the sweep's ids must come after it
        earlier = add_event(s, later, EventKind.STEP_FINISHED, "before")
    published: list[events.LiveEvent] = []
    monkeypatch.setattr(events, "_mode", lambda: "redis")  # publish as with a Redis broker (this one is memory://)
    monkeypatch.setattr(events, "listened_channels", lambda: frozenset({events.INBOX_CHANNEL}))
    monkeypatch.setattr(events, "publish", lambda evs, listened=None: published.extend(evs))

    assert sweep_deadlines(limit=DUE + 10) == DUE
    assert sweep_deadlines(limit=DUE + 10) == 0

    with session_scope() as s:
        rows = s.execute(
            select(RunEvent.id, RunEvent.run_id, RunEvent.kind, RunEvent.name).where(RunEvent.id > earlier)
        ).all()
        runs: dict[str, Any] = {r.id: r for r in s.scalars(select(Run).where(Run.id.in_(resumed + ended)))}
        outbox = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.run_id.in_(resumed)))
        pending = s.scalar(select(Approval.status).where(Approval.run_id == later))
    resolved = [r for r in rows if r.kind is EventKind.RESOLVED]
    finished = [r for r in rows if r.kind is EventKind.FINISHED]
    assert sorted(r.run_id for r in resolved) == sorted(resumed + ended)
    assert sorted(r.run_id for r in finished) == sorted(ended)
    assert len(rows) == len(resolved) + len(finished)
    # Every row written was published once, with the id the database holds for it.
    assert sorted((e["id"], e["run_id"], e["kind"], e["name"]) for e in published) == sorted(
        (r.id, r.run_id, r.kind.value, r.name) for r in rows
    )
    assert all(runs[r].status is RunStatus.RUNNING for r in resumed) and outbox == len(resumed)
    assert all(runs[r].status is RunStatus.TIMED_OUT for r in ended)
    assert all(runs[r].result["outcome"] == "timed_out" and runs[r].result["run_id"] == r for r in ended)
    assert pending is ApprovalStatus.PENDING

    with session_scope() as s:  # a single-row insert afterwards (the column's own default) comes after them
        after = add_event(s, later, EventKind.STEP_FINISHED, "after")
    assert after > max(r.id for r in rows)
