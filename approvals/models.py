"""SQLAlchemy 2.0 models: runs, approvals (the request), decisions (the response), the run timeline and
the outbox of messages to dispatch after commit.

Times are timezone-aware UTC (``UtcDateTime`` restores the zone SQLite drops). Statuses are stored as
their string values and read back as enums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from approvals.status import ApprovalStatus, EventKind, RunStatus, StepStatus


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always returns aware UTC datetimes, also on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; hitl stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _status_column(enum: type[RunStatus] | type[ApprovalStatus] | type[EventKind] | type[StepStatus]) -> SqlEnum:
    """A portable VARCHAR column holding the enum's values (no native ENUM type, no CHECK constraint)."""
    return SqlEnum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


#: ``Session.info`` key of the timeline rows a transaction inserted, published live after it commits
#: (:mod:`hitl.infra.events`). Rows are noted here with :func:`note_new_events` by the functions that insert them
#: (:func:`approvals.transitions.add_event`, ``insert_events``); a ``RunEvent`` added to a session as an ORM
#: object is stored but not published.
NEW_EVENTS_KEY = "hitl_new_events"


def note_new_events(session: Session, rows: Sequence[Mapping[Any, Any]]) -> None:
    """Note timeline rows inserted in bulk (``INSERT ... RETURNING`` mappings) for publishing after commit."""
    session.info.setdefault(NEW_EVENTS_KEY, []).extend(dict(r) for r in rows)


class Base(DeclarativeBase):
    """Declarative base of hitl's own tables."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    """One execution of a registered workflow."""

    __tablename__ = "hitl_runs"
    __table_args__ = (  # listings: by status, newest first (hitl.core.views.list_runs)
        Index("ix_hitl_runs_status_created", "status", "created_at"),
        Index("ix_hitl_runs_created", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[RunStatus] = mapped_column(_status_column(RunStatus))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    #: Who started the run (the API key's actor, or ``requester=`` of :func:`hitl.start`).
    requester: Mapped[str | None] = mapped_column(String(200), nullable=True)
    payload: Mapped[Any] = mapped_column(JSON)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)

    approvals: Mapped[list[Approval]] = relationship(back_populates="run", order_by="Approval.created_at")


class Approval(Base):
    """What a person is asked: one waitpoint of a run. The answer lives in :class:`DecisionRecord`."""

    __tablename__ = "hitl_approvals"
    __table_args__ = (
        Index("ix_hitl_approvals_status_deadline", "status", "deadline"),
        Index("ix_hitl_approvals_status_reminder", "status", "next_reminder_at"),
        Index("ix_hitl_approvals_status_escalate", "status", "escalate_at"),
        Index("ix_hitl_approvals_status_created", "status", "created_at", "id"),  # the inbox, oldest first
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: None for an approval created ahead (lookback) until a wait step claims it.
    run_id: Mapped[str | None] = mapped_column(ForeignKey("hitl_runs.id"), index=True, nullable=True)
    key: Mapped[str] = mapped_column(String(200))
    status: Mapped[ApprovalStatus] = mapped_column(_status_column(ApprovalStatus))
    #: The task id of the wait step that created or claimed this row; a redelivered wait finds its row by it.
    step_task_id: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    #: Caller-chosen key of an approval created ahead (lookback); the wait step with the same key takes it.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    #: What is to be reviewed: the result of the step before the wait.
    subject: Mapped[Any] = mapped_column(JSON)
    assignees: Mapped[list[Any]] = mapped_column(JSON, default=list)
    deadline: Mapped[datetime] = mapped_column()
    #: The rest of the chain, as Celery signature dicts in run order.
    continuation: Mapped[list[Any]] = mapped_column(JSON, default=list)
    on_reject: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    on_timeout: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    #: Outcome applied at the deadline instead of ``timed_out`` ("approved" or "rejected"), if declared.
    timeout_default: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: The JSON Schema a decision's data must satisfy, and the pydantic model it came from ("module:Name").
    decision_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: The approval policy declared by the wait (quorum, stages, requester rule, reminders, escalation).
    policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Who asked (the run's requester); with ``forbid_requester`` they may not decide.
    requester: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: Index of the current sign-off stage (sequential sign-off); 0 when there is one stage.
    stage: Mapped[int] = mapped_column(Integer, default=0)
    #: When the next reminder is due (None: no more reminders); the reminder sweep walks this column.
    next_reminder_at: Mapped[datetime | None] = mapped_column(nullable=True)
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    #: When the approval is due to be escalated (None: never); the reminder sweep walks this column too.
    escalate_at: Mapped[datetime | None] = mapped_column(nullable=True)
    #: When the approval was escalated (None: not yet, or never).
    escalated_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(nullable=True)

    run: Mapped[Run | None] = relationship(back_populates="approvals")
    decision: Mapped[DecisionRecord | None] = relationship(back_populates="approval", uselist=False)
    votes: Mapped[list[Vote]] = relationship(order_by="Vote.id", viewonly=True)


class DecisionRecord(Base):
    """What was answered, by whom and when: the response to one :class:`Approval`."""

    __tablename__ = "hitl_decisions"

    approval_id: Mapped[str] = mapped_column(ForeignKey("hitl_approvals.id"), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actor: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    channel: Mapped[str] = mapped_column(String(16))
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)

    approval: Mapped[Approval] = relationship(back_populates="decision")


class StepRecord(Base):
    """One step execution, keyed by its deterministic task id: how a second delivery is told from the first.

    Written once, when the step is done (``INSERT ... ON CONFLICT`` on ``task_id``, never over a finished row): of two
    overlapping deliveries the first to finish wins (see :mod:`hitl.delivery.steplog`). ``attempt`` is 1 + the Celery
    retries of the delivery that finished.
    """

    __tablename__ = "hitl_steps"

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("hitl_runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[StepStatus] = mapped_column(_status_column(StepStatus))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    #: The task id of the message this step's completion put in the outbox (the next link, or a replacement).
    next_task_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class RunEvent(Base):
    """One entry of a run's timeline, append-only."""

    __tablename__ = "hitl_run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("hitl_runs.id"), index=True)
    kind: Mapped[EventKind] = mapped_column(_status_column(EventKind))
    name: Mapped[str] = mapped_column(String(200), default="")
    task_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxMessage(Base):
    """A Celery message written in the same transaction as the state change that calls for it.

    See :mod:`hitl.delivery.outbox` for its life: sent after commit, delivered when its step finishes, re-sent by the
    relay otherwise. ``task_id`` is deterministic so the receiving step can tell a second delivery.
    """

    __tablename__ = "hitl_outbox"
    __table_args__ = (Index("ix_hitl_outbox_undelivered", "delivered_at", "sent_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("hitl_runs.id"), index=True)
    task_id: Mapped[str] = mapped_column(String(255), unique=True)
    #: A Celery signature dict (a task or a chain) to apply.
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Positional arguments prepended when it is applied (the decision, for a continuation).
    args: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    #: Re-sends: how often the relay published the row again after it had been sent. A publish that failed
    #: (broker down) and the relay's first publish of an unsent row do not count; the re-send backoff does.
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class ApiKey(Base):
    """A credential of the HTTP API. Only the SHA-256 of the secret is stored; the key is shown once.

    The secret is 32 random bytes, so a fast hash is enough (no password stretching needed): guessing it is
    as hard as guessing the key itself.
    """

    __tablename__ = "hitl_api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: Who acts with this key: recorded as the decider of the decisions made with it.
    actor: Mapped[str] = mapped_column(String(200))
    #: What the key may do (see :class:`approvals.status.Scope`).
    scopes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class UsedToken(Base):
    """The nonce of a single-use signed link, written in the transaction of the decision it made."""

    __tablename__ = "hitl_used_tokens"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    approval_id: Mapped[str] = mapped_column(ForeignKey("hitl_approvals.id"), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    used_at: Mapped[datetime] = mapped_column(default=utcnow)


class Vote(Base):
    """One person's vote on an approval that needs more than one (quorum, sequential sign-off)."""

    __tablename__ = "hitl_votes"
    __table_args__ = (UniqueConstraint("approval_id", "stage", "actor", name="uq_hitl_votes_one_per_person"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    approval_id: Mapped[str] = mapped_column(ForeignKey("hitl_approvals.id"), index=True)
    stage: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    channel: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class GroupMember(Base):
    """Membership of a user in an approver group (groups may also come from ``HITL_GROUPS``)."""

    __tablename__ = "hitl_group_members"

    group: Mapped[str] = mapped_column(String(200), primary_key=True)
    member: Mapped[str] = mapped_column(String(200), primary_key=True)


class Notification(Base):
    """A reminder or escalation notice to send, written by the reminder sweep and sent by the notifier task.

    ``(approval_id, kind, seq)`` is unique, so a duplicate beat tick cannot write the same notice twice.
    """

    __tablename__ = "hitl_notifications"
    __table_args__ = (
        UniqueConstraint("approval_id", "kind", "seq", name="uq_hitl_notifications_once"),
        Index("ix_hitl_notifications_unsent", "sent_at", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    approval_id: Mapped[str] = mapped_column(ForeignKey("hitl_approvals.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer, default=0)
    recipients: Mapped[list[Any]] = mapped_column(JSON, default=list)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditRecord(Base):
    """One entry of the append-only audit log: a decision attempt, accepted or refused.

    ``hash`` is SHA-256 over the entry's fields and ``prev_hash`` (the hash of the previous entry of the same
    ``chain``: the run's id, ``approval:<id>``, ``-`` or ``anchor``; see :mod:`hitl.core.audit`), so editing or
    deleting an entry breaks its chain (``hitl audit verify``).
    """

    __tablename__ = "hitl_audit"
    __table_args__ = (Index("ix_hitl_audit_chain_id", "chain", "id"),)  # a chain's head, and verify's walk

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    approval_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    accepted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    payload_hash: Mapped[str] = mapped_column(String(64))
    chain: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class Blob(Base):
    """A large input stored once, by the SHA-256 of its JSON, and passed by reference."""

    __tablename__ = "hitl_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[Any] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
