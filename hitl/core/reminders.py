"""Reminders and escalation of pending approvals: the sweep that writes notices, never sends them.

A wait declares ``remind_after``/``remind_every`` and ``escalate_after``/``escalate_to`` (its policy); the wait
step sets ``next_reminder_at`` and ``escalate_at``. Beat runs :func:`sweep_reminders` every
``HITL_REMIND_INTERVAL`` s. It walks the ``(status, next_reminder_at)`` and ``(status, escalate_at)`` indexes,
and for each due approval makes one compare-and-set with a ``hitl_notifications`` row in the same
transaction:

- a reminder: ``reminders_sent`` n → n+1 (``WHERE status = 'pending' AND reminders_sent = n``), the next
  reminder one ``remind_every`` later (none after the deadline, none without ``remind_every``);
- the escalation: ``escalated_at`` NULL → now, ``escalate_to`` added to ``assignees``, a timeline entry.

Two beats ticking at once therefore write each notice once (the row count decides, and the notification's
``UNIQUE(approval_id, kind, seq)`` backs it). Notices are sent by :mod:`hitl.core.notify`, in another task: the
deadline sweep and this sweep never wait on a notifier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approvals.models import Approval, Notification, Run, utcnow
from approvals.schemas import ApprovalPolicy
from approvals.status import ApprovalStatus, EventKind, NotificationKind
from approvals.transitions import add_event, rowcount
from hitl.core import groups
from hitl.infra.db import session_scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Due:
    """What the sweep read of a due approval (outside the write transaction)."""

    id: str
    run_id: str | None
    workflow: str | None
    key: str
    assignees: list[str]
    stage: int
    reminders_sent: int
    next_reminder_at: datetime | None
    deadline: datetime
    policy: ApprovalPolicy


def _due(column: Any, limit: int, now: datetime) -> list[_Due]:
    with session_scope() as s:
        rows = s.execute(
            select(Approval, Run.workflow)
            .outerjoin(Run, Run.id == Approval.run_id)
            .where(Approval.status == ApprovalStatus.PENDING, column <= now)
            .order_by(column)
            .limit(limit)
        ).all()
        return [
            _Due(
                id=a.id,
                run_id=a.run_id,
                workflow=workflow,
                key=a.key,
                assignees=[str(x) for x in a.assignees],
                stage=a.stage,
                reminders_sent=a.reminders_sent,
                next_reminder_at=a.next_reminder_at,
                deadline=a.deadline,
                policy=ApprovalPolicy.model_validate(a.policy or {}),
            )
            for a, workflow in rows
        ]


def next_reminder(previous: datetime, every: float | None, deadline: datetime, now: datetime) -> datetime | None:
    """When the reminder after the one due at ``previous`` is due: one ``every`` later (skipping reminders
    missed while no sweep ran, so a stopped beat does not cause a burst), None without ``every`` or at or
    after the deadline."""
    if not every:
        return None
    step = timedelta(seconds=every)
    following = previous + step
    if following <= now:
        following = now + step
    return following if following < deadline else None


def _notice_detail(a: _Due, **extra: Any) -> dict[str, Any]:
    return {"run_id": a.run_id, "workflow": a.workflow, "key": a.key, "deadline": a.deadline.isoformat(), **extra}


def _write(
    s: Session,
    a: _Due,
    kind: NotificationKind,
    seq: int,
    recipients: list[str],
    detail: dict[str, Any],
    now: datetime,
    event: tuple[EventKind, dict[str, Any]],
) -> bool:
    """Add the notice (in a savepoint) and, for an approval a run has taken, its timeline entry.

    Returns False, with nothing written, if that notice (approval, kind, seq) already exists.
    """
    try:
        with s.begin_nested():
            s.add(
                Notification(
                    approval_id=a.id,
                    kind=kind.value,
                    seq=seq,
                    recipients=recipients,
                    detail=detail,
                    created_at=now,
                    next_attempt_at=now,
                )
            )
    except IntegrityError:
        return False
    if a.run_id is not None:
        add_event(s, run_id=a.run_id, kind=event[0], name=a.key, detail=event[1])
    return True


def _remind(a: _Due, now: datetime) -> bool:
    seq = a.reminders_sent + 1
    assert a.next_reminder_at is not None
    following = next_reminder(a.next_reminder_at, a.policy.remind_every, a.deadline, now)
    recipients = sorted(groups.expand(a.assignees))
    with session_scope() as s:
        won = rowcount(
            s.execute(
                update(Approval)
                .where(
                    Approval.id == a.id,
                    Approval.status == ApprovalStatus.PENDING,
                    Approval.reminders_sent == a.reminders_sent,
                )
                .values(reminders_sent=seq, next_reminder_at=following)
            )
        )
        if not won:
            return False
        return _write(
            s,
            a,
            NotificationKind.REMINDER,
            seq,
            recipients,
            _notice_detail(a, assignees=a.assignees),
            now,
            (EventKind.REMINDED, {"approval_id": a.id, "reminder": seq, "recipients": recipients}),
        )


def _escalate(a: _Due, now: datetime) -> bool:
    added = [g for g in a.policy.escalate_to if g not in a.assignees]
    assignees = a.assignees + added
    recipients = sorted(groups.expand(a.policy.escalate_to))
    with session_scope() as s:
        # The stage is part of the condition: a sign-off stage that moved on in between replaced the
        # assignees read above, and the next sweep escalates from the new ones.
        won = rowcount(
            s.execute(
                update(Approval)
                .where(
                    Approval.id == a.id,
                    Approval.status == ApprovalStatus.PENDING,
                    Approval.escalated_at.is_(None),
                    Approval.stage == a.stage,
                )
                .values(escalated_at=now, escalate_at=None, assignees=assignees)
            )
        )
        if not won:
            return False
        escalate_to = list(a.policy.escalate_to)
        return _write(
            s,
            a,
            NotificationKind.ESCALATION,
            1,
            recipients,
            _notice_detail(a, assignees=assignees, escalate_to=escalate_to),
            now,
            (EventKind.ESCALATED, {"approval_id": a.id, "escalate_to": escalate_to, "assignees": assignees}),
        )


def sweep_reminders(limit: int = 500) -> int:
    """Escalate and remind up to ``limit`` due pending approvals each; return how many notices this call wrote.

    Escalations go first, so a reminder due in the same sweep already goes to the escalation group too.
    Each approval is its own transaction (see the module docstring for the compare-and-set rules).
    """
    now = utcnow()
    written = 0
    for a in _due(Approval.escalate_at, limit, now):
        written += _escalate(a, now)
    for a in _due(Approval.next_reminder_at, limit, now):
        written += _remind(a, now)
    if written:
        log.info("reminder sweep: %d notice(s) queued", written)
    return written
