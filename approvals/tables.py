"""hitl's schema as SQLAlchemy Core tables: the one definition of every table, column and index.

:mod:`approvals.models` maps these tables with the ORM (``__table__``); code that reads with Core alone (the
CLI's list commands, :mod:`hitl.core.listings`) imports this module and never pays for the ORM's import. The
Alembic migrations and their test compare the database with :data:`metadata`.

Times are timezone-aware UTC (:class:`UtcDateTime` restores the zone SQLite drops). Statuses are stored as
their string values and read back as enums.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from approvals.status import ApprovalStatus, EventKind, RunStatus, StepStatus


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always returns aware UTC datetimes, also on SQLite.

    Raises:
        ValueError: a naive datetime is bound (hitl stores aware UTC times only).
    """

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


class not_indexed(FunctionElement[Any]):
    """``not_indexed(column)`` is ``column``, except that SQLite gets ``+column``: a term SQLite's query planner
    may not use an index for (https://sqlite.org/optoverview.html, "Disqualifying WHERE clause terms using
    unary-+"). Other databases get the column unchanged.

    Without statistics (hitl does not run ``ANALYZE``) SQLite takes an equality on the first column of any index
    as selective. ``id IN (...) AND status IN (...)`` on 1,000,000 waiting runs then walked the ``status``
    index instead of the primary key: 3.0 to 3.2 of the 5.2 to 5.6 s of a 10,000-approval sweep.
    ``run_id = ? AND status = 'pending'`` among 1,000,000 pending approvals took 1.1 s instead of 0.2 ms.
    Wrap ``status`` in such statements, where another term (an id) picks the rows.
    """

    inherit_cache = True
    name = "not_indexed"

    def __init__(self, column: Any) -> None:
        super().__init__(column)
        self.type = next(iter(self.clauses)).type


@compiles(not_indexed)
def _render_column(element: not_indexed, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(not_indexed, "sqlite")
def _render_unary_plus(element: not_indexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.clauses, **kw)


def _status(enum: type[RunStatus] | type[ApprovalStatus] | type[EventKind] | type[StepStatus]) -> SqlEnum:
    """A portable VARCHAR column type holding the enum's values (no native ENUM type, no CHECK constraint)."""
    return SqlEnum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


def _required(name: str, type_: Any, *args: Any, **kw: Any) -> Column[Any]:
    return Column(name, type_, *args, nullable=False, **kw)


def _optional(name: str, type_: Any, *args: Any, **kw: Any) -> Column[Any]:
    return Column(name, type_, *args, nullable=True, **kw)


metadata = MetaData()

#: One execution of a registered workflow.
runs = Table(
    "hitl_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    _required("workflow", String(200), index=True),
    _required("status", _status(RunStatus)),
    _optional("idempotency_key", String(200), unique=True),
    _optional("requester", String(200)),  # who started the run (the API key's actor, or requester=)
    _required("payload", JSON),
    _optional("result", JSON),
    _optional("error", Text),
    _required("created_at", UtcDateTime, default=utcnow),
    _required("updated_at", UtcDateTime, default=utcnow),
    _optional("finished_at", UtcDateTime),
    # listings: by status, newest first (hitl.core.listings)
    Index("ix_hitl_runs_status_created", "status", "created_at"),
    Index("ix_hitl_runs_created", "created_at"),
)

#: What a person is asked: one waitpoint of a run (the answer is in :data:`decisions`).
approvals = Table(
    "hitl_approvals",
    metadata,
    Column("id", String(32), primary_key=True),
    # None for an approval created ahead (lookback) until a wait step claims it.
    _optional("run_id", String(32), ForeignKey("hitl_runs.id"), index=True),
    _required("key", String(200)),
    _required("status", _status(ApprovalStatus)),
    # The task id of the wait step that created or claimed this row; a redelivered wait finds its row by it.
    _optional("step_task_id", String(255), unique=True),
    # Caller-chosen key of an approval created ahead (lookback); the wait step with the same key takes it.
    _optional("idempotency_key", String(200), unique=True),
    _required("subject", JSON),  # what is to be reviewed: the result of the step before the wait
    _required("assignees", JSON, default=list),
    _required("deadline", UtcDateTime),
    _required("continuation", JSON, default=list),  # the rest of the chain, Celery signature dicts in run order
    _optional("on_reject", JSON),
    _optional("on_timeout", JSON),
    # Outcome applied at the deadline instead of timed_out ("approved" or "rejected"), if declared.
    _optional("timeout_default", String(16)),
    # The JSON Schema a decision's data must satisfy, and the pydantic model it came from ("module:Name").
    _optional("decision_schema", JSON),
    # The approval policy declared by the wait (quorum, stages, requester rule, reminders, escalation).
    _required("policy", JSON, default=dict),
    _optional("requester", String(200)),  # who asked; with forbid_requester they may not decide
    _required("stage", Integer, default=0),  # the current sign-off stage (0 when there is one)
    _optional("next_reminder_at", UtcDateTime),  # None: no more reminders; the reminder sweep walks it
    _required("reminders_sent", Integer, default=0),
    _optional("escalate_at", UtcDateTime),  # None: never; the reminder sweep walks it too
    _optional("escalated_at", UtcDateTime),
    _required("created_at", UtcDateTime, default=utcnow),
    _optional("resolved_at", UtcDateTime),
    Index("ix_hitl_approvals_status_deadline", "status", "deadline"),
    Index("ix_hitl_approvals_status_reminder", "status", "next_reminder_at"),
    Index("ix_hitl_approvals_status_escalate", "status", "escalate_at"),
    Index("ix_hitl_approvals_status_created", "status", "created_at", "id"),  # the inbox, oldest first
)

#: What was answered, by whom and when: the response to one approval.
decisions = Table(
    "hitl_decisions",
    metadata,
    Column("approval_id", String(32), ForeignKey("hitl_approvals.id"), primary_key=True),
    _required("outcome", String(16)),
    _required("data", JSON, default=dict),
    _required("actor", String(200)),
    _optional("comment", Text),
    _required("channel", String(16)),
    _required("decided_at", UtcDateTime, default=utcnow),
)

#: One journaled step execution, keyed by its deterministic task id (see :class:`approvals.models.StepRecord`).
steps = Table(
    "hitl_steps",
    metadata,
    Column("task_id", String(255), primary_key=True),
    _required("run_id", String(32), ForeignKey("hitl_runs.id"), index=True),
    _required("name", String(200)),
    _required("status", _status(StepStatus)),
    _required("attempt", Integer, default=1),
    _optional("result", JSON),
    # The task id of the message this step's completion put in the outbox (the next link, or a replacement).
    _optional("next_task_id", String(255)),
    _required("started_at", UtcDateTime, default=utcnow),
    _optional("finished_at", UtcDateTime),
)

#: One entry of a run's timeline, append-only.
run_events = Table(
    "hitl_run_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("run_id", String(32), ForeignKey("hitl_runs.id"), index=True),
    _required("kind", _status(EventKind)),
    _required("name", String(200), default=""),
    _optional("task_id", String(255)),
    _required("detail", JSON, default=dict),
    _optional("started_at", UtcDateTime),
    _required("at", UtcDateTime, default=utcnow),
)

#: A Celery message written in the same transaction as the state change that calls for it (:mod:`hitl.delivery.outbox`).
outbox = Table(
    "hitl_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("run_id", String(32), ForeignKey("hitl_runs.id"), index=True),
    _required("task_id", String(255), unique=True),
    _required("signature", JSON),  # a Celery signature dict (a task or a chain) to apply
    _required("args", JSON, default=list),  # positional arguments prepended when it is applied
    _required("created_at", UtcDateTime, default=utcnow),
    _optional("sent_at", UtcDateTime),
    _optional("delivered_at", UtcDateTime),
    _required("attempts", Integer, default=0),  # re-sends (see OutboxMessage.attempts)
    Index("ix_hitl_outbox_undelivered", "delivered_at", "sent_at"),
)

#: A credential of the HTTP API; only the SHA-256 of the secret is stored.
api_keys = Table(
    "hitl_api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    _required("actor", String(200)),
    _required("scopes", JSON, default=list),
    _required("key_hash", String(64), unique=True),
    _required("note", String(200), default=""),
    _required("created_at", UtcDateTime, default=utcnow),
    _optional("revoked_at", UtcDateTime),
)

#: The nonce of a single-use signed link, written in the transaction of the decision it made.
used_tokens = Table(
    "hitl_used_tokens",
    metadata,
    Column("nonce", String(64), primary_key=True),
    _required("approval_id", String(32), ForeignKey("hitl_approvals.id"), index=True),
    _required("actor", String(200)),
    _required("used_at", UtcDateTime, default=utcnow),
)

#: One person's vote on an approval that needs more than one (quorum, sequential sign-off).
votes = Table(
    "hitl_votes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("approval_id", String(32), ForeignKey("hitl_approvals.id"), index=True),
    _required("stage", Integer, default=0),
    _required("actor", String(200)),
    _required("outcome", String(16)),
    _required("data", JSON, default=dict),
    _optional("comment", Text),
    _required("channel", String(16)),
    _required("at", UtcDateTime, default=utcnow),
    UniqueConstraint("approval_id", "stage", "actor", name="uq_hitl_votes_one_per_person"),
)

#: Membership of a user in an approver group (groups may also come from ``HITL_GROUPS``).
group_members = Table(
    "hitl_group_members",
    metadata,
    Column("group", String(200), primary_key=True),
    Column("member", String(200), primary_key=True),
)

#: A reminder or escalation notice to send; ``(approval_id, kind, seq)`` is unique.
notifications = Table(
    "hitl_notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("approval_id", String(32), ForeignKey("hitl_approvals.id"), index=True),
    _required("kind", String(32)),
    _required("seq", Integer, default=0),
    _required("recipients", JSON, default=list),
    _required("detail", JSON, default=dict),
    _required("created_at", UtcDateTime, default=utcnow),
    _required("next_attempt_at", UtcDateTime, default=utcnow),
    _optional("sent_at", UtcDateTime),
    _required("attempts", Integer, default=0),
    _optional("last_error", Text),
    UniqueConstraint("approval_id", "kind", "seq", name="uq_hitl_notifications_once"),
    Index("ix_hitl_notifications_unsent", "sent_at", "next_attempt_at"),
)

#: One entry of the append-only, hash-chained audit log (see :class:`approvals.models.AuditRecord`).
audit = Table(
    "hitl_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("at", UtcDateTime, default=utcnow),
    _required("actor", String(200)),
    _required("channel", String(16)),
    _required("action", String(32)),
    _optional("approval_id", String(32), index=True),
    _optional("run_id", String(32), index=True),
    _optional("outcome", String(16)),
    _required("accepted", Boolean),
    _optional("reason", Text),
    _optional("comment", Text),
    _required("payload_hash", String(64)),
    _required("chain", String(64)),
    _required("prev_hash", String(64)),
    _required("hash", String(64), unique=True),
    Index("ix_hitl_audit_chain_id", "chain", "id"),  # a chain's head, and verify's walk
)

#: A large input stored once, by the SHA-256 of its JSON, and passed by reference.
blobs = Table(
    "hitl_blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    _required("data", JSON),
    _required("size", Integer),
    _required("created_at", UtcDateTime, default=utcnow),
)
