"""SQLAlchemy 2.0 ORM models: runs, approvals (the request), decisions (the response), the run timeline and
the outbox of messages to dispatch after commit.

Each class maps its Core table of :mod:`approvals.tables` (``__table__``), where the columns, types and indexes
are defined once; the annotations here type the mapped attributes. Times are timezone-aware UTC; statuses are
read back as enums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped, Session, relationship

from approvals import tables
from approvals.status import ApprovalStatus, EventKind, RunStatus, StepStatus
from approvals.tables import UtcDateTime, utcnow

__all__ = [
    "ApiKey",
    "Approval",
    "AuditRecord",
    "Base",
    "Blob",
    "DecisionRecord",
    "GroupMember",
    "Notification",
    "OutboxMessage",
    "Run",
    "RunEvent",
    "StepRecord",
    "UsedToken",
    "UtcDateTime",
    "Vote",
    "note_new_events",
    "utcnow",
]

#: ``Session.info`` key of the timeline rows a transaction inserted, published live after it commits
#: (:mod:`hitl.infra.events`). Rows are noted here with :func:`note_new_events` by the functions that insert them
#: (:func:`approvals.transitions.add_event`, ``insert_events``); a ``RunEvent`` added to a session as an ORM
#: object is stored but not published.
NEW_EVENTS_KEY = "hitl_new_events"


def note_new_events(session: Session, rows: Sequence[Mapping[Any, Any]]) -> None:
    """Note timeline rows inserted in bulk (``INSERT ... RETURNING`` mappings) for publishing after commit."""
    session.info.setdefault(NEW_EVENTS_KEY, []).extend(dict(r) for r in rows)


class Base(DeclarativeBase):
    """Declarative base of hitl's own tables (their metadata is :data:`approvals.tables.metadata`)."""

    metadata = tables.metadata


class Run(Base):
    """One execution of a registered workflow."""

    __table__ = tables.runs

    id: Mapped[str]
    workflow: Mapped[str]
    status: Mapped[RunStatus]
    idempotency_key: Mapped[str | None]
    #: Who started the run (the API key's actor, or ``requester=`` of :func:`hitl.start`).
    requester: Mapped[str | None]
    payload: Mapped[Any]
    result: Mapped[Any | None]
    error: Mapped[str | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    approvals: Mapped[list[Approval]] = relationship(back_populates="run", order_by="Approval.created_at")


class Approval(Base):
    """What a person is asked: one waitpoint of a run. The answer lives in :class:`DecisionRecord`."""

    __table__ = tables.approvals

    id: Mapped[str]
    #: None for an approval created ahead (lookback) until a wait step claims it.
    run_id: Mapped[str | None]
    key: Mapped[str]
    status: Mapped[ApprovalStatus]
    #: The task id of the wait step that created or claimed this row; a redelivered wait finds its row by it.
    step_task_id: Mapped[str | None]
    #: Caller-chosen key of an approval created ahead (lookback); the wait step with the same key takes it.
    idempotency_key: Mapped[str | None]
    #: What is to be reviewed: the result of the step before the wait.
    subject: Mapped[Any]
    assignees: Mapped[list[Any]]
    deadline: Mapped[datetime]
    #: The rest of the chain, as Celery signature dicts in run order.
    continuation: Mapped[list[Any]]
    on_reject: Mapped[list[Any] | None]
    on_timeout: Mapped[list[Any] | None]
    #: Outcome applied at the deadline instead of ``timed_out`` ("approved" or "rejected"), if declared.
    timeout_default: Mapped[str | None]
    #: The JSON Schema a decision's data must satisfy, and the pydantic model it came from ("module:Name").
    decision_schema: Mapped[dict[str, Any] | None]
    #: The approval policy declared by the wait (quorum, stages, requester rule, reminders, escalation).
    policy: Mapped[dict[str, Any]]
    #: Who asked (the run's requester); with ``forbid_requester`` they may not decide.
    requester: Mapped[str | None]
    #: Index of the current sign-off stage (sequential sign-off); 0 when there is one stage.
    stage: Mapped[int]
    #: When the next reminder is due (None: no more reminders); the reminder sweep walks this column.
    next_reminder_at: Mapped[datetime | None]
    reminders_sent: Mapped[int]
    #: When the approval is due to be escalated (None: never); the reminder sweep walks this column too.
    escalate_at: Mapped[datetime | None]
    #: When the approval was escalated (None: not yet, or never).
    escalated_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]

    run: Mapped[Run | None] = relationship(back_populates="approvals")
    decision: Mapped[DecisionRecord | None] = relationship(back_populates="approval", uselist=False)
    votes: Mapped[list[Vote]] = relationship(order_by="Vote.id", viewonly=True)


class DecisionRecord(Base):
    """What was answered, by whom and when: the response to one :class:`Approval`."""

    __table__ = tables.decisions

    approval_id: Mapped[str]
    outcome: Mapped[str]
    data: Mapped[dict[str, Any]]
    actor: Mapped[str]
    comment: Mapped[str | None]
    channel: Mapped[str]
    decided_at: Mapped[datetime]

    approval: Mapped[Approval] = relationship(back_populates="decision")


class StepRecord(Base):
    """One step execution, keyed by its deterministic task id: how a second delivery is told from the first.

    Written once, when the step is done (``INSERT ... ON CONFLICT`` on ``task_id``, never over a finished row): of two
    overlapping deliveries the first to finish wins (see :mod:`hitl.delivery.steplog`). ``attempt`` is 1 + the Celery
    retries of the delivery that finished.
    """

    __table__ = tables.steps

    task_id: Mapped[str]
    run_id: Mapped[str]
    name: Mapped[str]
    status: Mapped[StepStatus]
    attempt: Mapped[int]
    result: Mapped[Any | None]
    #: The task id of the message this step's completion put in the outbox (the next link, or a replacement).
    next_task_id: Mapped[str | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class RunEvent(Base):
    """One entry of a run's timeline, append-only."""

    __table__ = tables.run_events

    id: Mapped[int]
    run_id: Mapped[str]
    kind: Mapped[EventKind]
    name: Mapped[str]
    task_id: Mapped[str | None]
    detail: Mapped[dict[str, Any]]
    started_at: Mapped[datetime | None]
    at: Mapped[datetime]


class OutboxMessage(Base):
    """A Celery message written in the same transaction as the state change that calls for it.

    See :mod:`hitl.delivery.outbox` for its life: sent after commit, delivered when its step finishes, re-sent by the
    relay otherwise. ``task_id`` is deterministic so the receiving step can tell a second delivery.
    """

    __table__ = tables.outbox

    id: Mapped[int]
    run_id: Mapped[str]
    task_id: Mapped[str]
    #: A Celery signature dict (a task or a chain) to apply.
    signature: Mapped[dict[str, Any]]
    #: Positional arguments prepended when it is applied (the decision, for a continuation).
    args: Mapped[list[Any]]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    #: Re-sends: how often the relay published the row again after it had been sent. A publish that failed
    #: (broker down) and the relay's first publish of an unsent row do not count; the re-send backoff does.
    attempts: Mapped[int]


class ApiKey(Base):
    """A credential of the HTTP API. Only the SHA-256 of the secret is stored; the key is shown once.

    The secret is 32 random bytes, so a fast hash is enough (no password stretching needed): guessing it is
    as hard as guessing the key itself.
    """

    __table__ = tables.api_keys

    id: Mapped[str]
    #: Who acts with this key: recorded as the decider of the decisions made with it.
    actor: Mapped[str]
    #: What the key may do (see :class:`approvals.status.Scope`).
    scopes: Mapped[list[Any]]
    key_hash: Mapped[str]
    note: Mapped[str]
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class UsedToken(Base):
    """The nonce of a single-use signed link, written in the transaction of the decision it made."""

    __table__ = tables.used_tokens

    nonce: Mapped[str]
    approval_id: Mapped[str]
    actor: Mapped[str]
    used_at: Mapped[datetime]


class Vote(Base):
    """One person's vote on an approval that needs more than one (quorum, sequential sign-off)."""

    __table__ = tables.votes

    id: Mapped[int]
    approval_id: Mapped[str]
    stage: Mapped[int]
    actor: Mapped[str]
    outcome: Mapped[str]
    data: Mapped[dict[str, Any]]
    comment: Mapped[str | None]
    channel: Mapped[str]
    at: Mapped[datetime]


class GroupMember(Base):
    """Membership of a user in an approver group (groups may also come from ``HITL_GROUPS``)."""

    __table__ = tables.group_members

    group: Mapped[str]
    member: Mapped[str]


class Notification(Base):
    """A reminder or escalation notice to send, written by the reminder sweep and sent by the notifier task.

    ``(approval_id, kind, seq)`` is unique, so a duplicate beat tick cannot write the same notice twice.
    """

    __table__ = tables.notifications

    id: Mapped[int]
    approval_id: Mapped[str]
    kind: Mapped[str]
    seq: Mapped[int]
    recipients: Mapped[list[Any]]
    detail: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    attempts: Mapped[int]
    last_error: Mapped[str | None]


class AuditRecord(Base):
    """One entry of the append-only audit log: a decision attempt, accepted or refused.

    ``hash`` is SHA-256 over the entry's fields and ``prev_hash`` (the hash of the previous entry of the same
    ``chain``: the run's id, ``approval:<id>``, ``-`` or ``anchor``; see :mod:`hitl.core.audit`), so editing or
    deleting an entry breaks its chain (``hitl audit verify``).
    """

    __table__ = tables.audit

    id: Mapped[int]
    at: Mapped[datetime]
    actor: Mapped[str]
    channel: Mapped[str]
    action: Mapped[str]
    approval_id: Mapped[str | None]
    run_id: Mapped[str | None]
    outcome: Mapped[str | None]
    accepted: Mapped[bool]
    reason: Mapped[str | None]
    comment: Mapped[str | None]
    payload_hash: Mapped[str]
    chain: Mapped[str]
    prev_hash: Mapped[str]
    hash: Mapped[str]


class Blob(Base):
    """A large input stored once, by the SHA-256 of its JSON, and passed by reference."""

    __table__ = tables.blobs

    sha256: Mapped[str]
    data: Mapped[Any]
    size: Mapped[int]
    created_at: Mapped[datetime]
