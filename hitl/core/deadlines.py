"""The deadline sweep, set-based: each batch of due approvals is timed out with a handful of statements.

One transaction per batch: a SELECT of up to ``limit`` due ids, then ``UPDATE ... RETURNING`` moves them
pending → timed_out (the compare-and-set: ``status = 'pending' AND deadline <= now`` is in its WHERE clause,
so an approval decided or swept by someone else in the meantime is not returned); then, in bulk, the decision rows,
the timeline entries, the runs' transitions and the continuations' outbox rows. After commit the
continuations are published on one broker connection. :func:`sweep` is its entry
point; the outcome rules (a wait's ``default``, ``on_timeout``) are those of :mod:`approvals.policy`.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from approvals import tables
from approvals.models import Approval, OutboxMessage, utcnow
from approvals.policy import FAIL_DEFAULT, continuation_for, default_data, timeout_outcome
from approvals.schemas import Outcome
from approvals.status import ApprovalStatus, EventKind, RunStatus
from approvals.tables import not_indexed
from approvals.transitions import CHUNK, end_runs, insert_events, move_runs
from hitl.core import audit, joins
from hitl.core.resume import (
    DEADLINE_ACTOR,
    TERMINAL_FOR,
    decision_of,
    make_decision,
    resolved_detail,
    resume_task_id,
)
from hitl.delivery import outbox
from hitl.infra.db import session_scope

_DECISIONS = tables.decisions


def sweep(limit: int = 500) -> int:
    """Time out up to ``limit`` pending approvals whose deadline has passed, in one transaction; return how many
    this call did.

    Set-based: the due ids come from the ``(status, deadline)`` index, and an ``UPDATE ... RETURNING`` by id moves
    them pending → timed_out, its WHERE clause being the compare-and-set (also requiring ``deadline <= now``), so
    two beats or a racing decision never resolve one twice. The continuation resumes with outcome ``timed_out``,
    or with the wait's declared default.
    """
    now = utcnow()
    with session_scope() as s:
        due = _time_out_due(s, now, limit)
        sent = _resolve(s, due, now) if due else []
    outbox.publish(sent)
    return len(due)


def _time_out_due(s: Session, now: datetime, limit: int) -> list[Approval]:
    """Move up to ``limit`` due approvals pending → timed_out (oldest deadline first); return them.

    The ids are read first and the UPDATE names them (by primary key, :data:`CHUNK` at a time): as one
    ``UPDATE ... WHERE id IN (SELECT ...)`` PostgreSQL may plan the subquery as a nested loop re-run for
    every row. The UPDATE repeats the conditions, so it is still the compare-and-set.
    """
    ids = list(
        s.scalars(
            select(Approval.id)
            .where(Approval.status == ApprovalStatus.PENDING, Approval.deadline <= now)
            .order_by(Approval.deadline)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL: a concurrent sweep takes other rows (SQLite: no-op)
        )
    )
    due: list[Approval] = []
    for i in range(0, len(ids), CHUNK):
        stmt = (
            update(Approval)
            .where(Approval.id.in_(ids[i : i + CHUNK]))
            .where(not_indexed(Approval.status) == ApprovalStatus.PENDING, Approval.deadline <= now)
            .values(status=ApprovalStatus.TIMED_OUT, resolved_at=now)
            .returning(Approval)
        )
        due += s.scalars(stmt, execution_options={"synchronize_session": False})
    return due


def _resolve(s: Session, due: list[Approval], now: datetime) -> list[OutboxMessage]:
    decisions: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    resumed: list[tuple[str, str, list[dict[str, Any]], list[Any]]] = []
    ended: dict[RunStatus, dict[str, Any]] = defaultdict(dict)
    audited: list[tuple[Approval, Outcome, dict[str, Any]]] = []
    joined: list[tuple[Approval, Outcome]] = []
    for approval in due:
        outcome, defaulted = timeout_outcome(approval)
        data = default_data(approval) if defaulted and outcome is not Outcome.TIMED_OUT else {}
        audited.append((approval, outcome, data))
        decisions.append(
            {
                "approval_id": approval.id,
                "outcome": outcome.value,
                "data": data,
                "actor": DEADLINE_ACTOR,
                "comment": None,
                "channel": "deadline",
                "decided_at": now,
            }
        )
        if approval.run_id is None:  # created ahead and never taken: the wait that takes it gets timed_out
            continue
        events.append(
            {
                "run_id": approval.run_id,
                "kind": EventKind.RESOLVED,
                "name": approval.key,
                "task_id": None,
                "started_at": None,
                "detail": resolved_detail(approval.id, outcome, DEADLINE_ACTOR, None, "deadline", defaulted=defaulted),
                "at": now,
            }
        )
        payload = make_decision(
            approval, outcome, actor=DEADLINE_ACTOR, comment=None, data=data, at=now, defaulted=defaulted
        ).model_dump(mode="json")
        if joins.is_joined(approval):  # a parallel wait goes on with its group, once its decision row exists
            joined.append((approval, outcome))
            continue
        if outcome is Outcome.TIMED_OUT and approval.timeout_default == FAIL_DEFAULT:
            ended[RunStatus.FAILED][approval.run_id] = payload
            continue
        sigs = continuation_for(approval, outcome)
        if sigs:
            resumed.append((approval.run_id, resume_task_id(approval.id), sigs, [payload]))
        else:
            ended[TERMINAL_FOR[outcome]][approval.run_id] = payload
    s.execute(insert(_DECISIONS), decisions)
    insert_events(s, events)
    move_runs(s, [run_id for run_id, *_ in resumed], RunStatus.RUNNING)
    for status, results in ended.items():
        end_runs(s, status, results)
    sent = outbox.enqueue_many(s, resumed)
    for approval, outcome in joined:
        sent += joins.settle(s, approval, outcome, decision_of)
    audit.record_many(  # last: the audit log's lock is held until commit (hitl.core.audit)
        s,
        [
            audit.entry_fields(
                action="timeout",
                actor=DEADLINE_ACTOR,
                channel="deadline",
                accepted=True,
                approval_id=approval.id,
                run_id=approval.run_id,
                outcome=outcome.value,
                payload=data,
            )
            for approval, outcome, data in audited
        ],
    )
    return sent
