"""Read side: runs and approvals as the pydantic views the CLI and the HTTP API print."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from approvals.errors import ApprovalNotFound, RunNotFound
from approvals.models import Approval, Notification, Run, RunEvent, utcnow
from approvals.schemas import ApprovalView, DecisionView, EventView, NotificationView, Outcome, RunView, VoteView
from approvals.status import ApprovalStatus, EventKind, NotificationKind, RunStatus
from hitl.core import listings
from hitl.infra.db import read_session
from hitl.infra.events import LiveEvent, live_event
from hitl.infra.settings import get_settings


def _approval_view(a: Approval, workflow: str | None) -> ApprovalView:
    d = a.decision
    return ApprovalView(
        id=a.id,
        run_id=a.run_id,
        workflow=workflow,
        key=a.key,
        status=a.status,
        subject=a.subject,
        assignees=[str(x) for x in a.assignees],
        deadline=a.deadline,
        created_at=a.created_at,
        resolved_at=a.resolved_at,
        decision_schema=a.decision_schema,
        policy=a.policy or {},
        requester=a.requester,
        stage=a.stage,
        idempotency_key=a.idempotency_key,
        votes=[VoteView.model_validate(v, from_attributes=True) for v in a.votes],
        decision=None
        if d is None
        else DecisionView(
            outcome=Outcome(d.outcome),
            data=d.data,
            actor=d.actor,
            comment=d.comment,
            channel=d.channel,
            decided_at=d.decided_at,
        ),
    )


#: The largest age filter accepted (100 years, in seconds); beyond it dates overflow.
MAX_AGE_SECONDS = listings.MAX_AGE_SECONDS


def list_approvals(
    status: ApprovalStatus | None = ApprovalStatus.PENDING,
    workflow: str | None = None,
    run_id: str | None = None,
    older_than: float | None = None,
    limit: int = 100,
    *,
    assignee: str | None = None,
    after: str | None = None,
) -> list[ApprovalView]:
    """Return approvals, oldest first, filtered by status (None: any), workflow, run, age and assignee
    (the rows of :func:`hitl.core.listings.list_approvals`, as views).

    Args:
        older_than: only approvals created at least this many seconds ago.
        assignee: only approvals whose assignees include this user or group name.
        after: a cursor (:func:`approval_cursor` of the last item of the previous page): the page after it.

    Raises:
        InvalidPayload: ``older_than`` is out of range, or ``after`` is not a cursor this function made.
    """
    rows = listings.list_approvals(status, workflow, run_id, older_than, limit, assignee=assignee, after=after)
    return [ApprovalView.model_validate(r) for r in rows]


def approval_cursor(view: ApprovalView) -> str:
    """Return the opaque cursor of ``view`` for :func:`list_approvals`'s ``after`` (keyset pagination)."""
    return listings.approval_cursor(view.created_at, view.id)


def events_after(run_id: str | None, after_id: int, kinds: frozenset[EventKind] | None = None) -> list[LiveEvent]:
    """Return timeline events with an id above ``after_id`` (of one run, or of every run), oldest first.

    Used to replay what a live-event subscriber missed (SSE ``Last-Event-ID``); at most 1000.
    """
    stmt = select(RunEvent).where(RunEvent.id > after_id).order_by(RunEvent.id).limit(1000)
    if run_id is not None:
        stmt = stmt.where(RunEvent.run_id == run_id)
    if kinds is not None:
        stmt = stmt.where(RunEvent.kind.in_(kinds))
    with read_session() as s:
        return [live_event(e) for e in s.scalars(stmt)]


def last_event_id() -> int:
    """Return the id of the newest timeline event (0 when there is none)."""
    with read_session() as s:
        return int(s.scalar(select(func.max(RunEvent.id))) or 0)


def get_approval(approval_id: str) -> ApprovalView:
    """Return one approval.

    Raises:
        ApprovalNotFound: no approval has that id.
    """
    with read_session() as s:
        row = s.execute(
            select(Approval, Run.workflow)
            .outerjoin(Run, Run.id == Approval.run_id)
            .where(Approval.id == approval_id)
            .options(selectinload(Approval.decision), selectinload(Approval.votes))
        ).one_or_none()
        if row is None:
            raise ApprovalNotFound(f"no approval has id {approval_id!r}")
        return _approval_view(row[0], row[1])


def _run_view(s: Session, run: Run, *, full: bool) -> RunView:
    view = RunView(
        id=run.id,
        workflow=run.workflow,
        status=run.status,
        idempotency_key=run.idempotency_key,
        payload=run.payload,
        result=run.result,
        error=run.error,
        created_at=run.created_at,
        updated_at=run.updated_at,
        finished_at=run.finished_at,
    )
    if full:
        view.approvals = [_approval_view(a, run.workflow) for a in run.approvals]
        events = s.scalars(select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id))
        view.timeline = [
            EventView(kind=e.kind, name=e.name, task_id=e.task_id, detail=e.detail, started_at=e.started_at, at=e.at)
            for e in events
        ]
    return view


def list_runs(status: RunStatus | None = None, workflow: str | None = None, limit: int = 100) -> list[RunView]:
    """Return runs, newest first, filtered by status and workflow (without approvals or timeline; the rows of
    :func:`hitl.core.listings.list_runs`, as views)."""
    return [RunView.model_validate(r) for r in listings.list_runs(status, workflow, limit)]


def get_run(run_id: str) -> RunView:
    """Return one run with its approvals and timeline.

    Raises:
        RunNotFound: no run has that id.
    """
    with read_session() as s:
        run = s.scalar(
            select(Run)
            .where(Run.id == run_id)
            .options(
                selectinload(Run.approvals).selectinload(Approval.decision),
                selectinload(Run.approvals).selectinload(Approval.votes),
            )
        )
        if run is None:
            raise RunNotFound(f"no run has id {run_id!r}")
        return _run_view(s, run, full=True)


def _state(n: Notification, max_attempts: int, now: datetime) -> Literal["sent", "pending", "failed"]:
    if n.sent_at is not None:
        return "sent"
    # Given up: recorded by the last attempt, or the last attempt's lease ran out without a record (it crashed).
    if (n.detail or {}).get("gave_up") or (n.attempts >= max_attempts and n.next_attempt_at <= now):
        return "failed"
    return "pending"


def list_notifications(approval_id: str | None = None, limit: int = 100) -> list[NotificationView]:
    """Return notifications (reminders, escalations) with their delivery state, newest first.

    Raises:
        ApprovalNotFound: ``approval_id`` is given and no approval has it.
    """
    max_attempts = get_settings().notify_max_attempts
    now = utcnow()
    stmt = select(Notification).order_by(Notification.id.desc()).limit(limit)
    with read_session() as s:
        if approval_id is not None:
            if s.get(Approval, approval_id) is None:
                raise ApprovalNotFound(f"no approval has id {approval_id!r}")
            stmt = stmt.where(Notification.approval_id == approval_id)
        rows = list(s.scalars(stmt))
    return [
        NotificationView(
            id=n.id,
            approval_id=n.approval_id,
            kind=NotificationKind(n.kind),
            seq=n.seq,
            recipients=[str(r) for r in n.recipients],
            created_at=n.created_at,
            sent_at=n.sent_at,
            attempts=n.attempts,
            next_attempt_at=n.next_attempt_at,
            last_error=n.last_error,
            state=_state(n, max_attempts, now),
            delivered_by=[str(x) for x in (n.detail or {}).get("delivered_by", [])],
        )
        for n in rows
    ]
