"""Pydantic models of what crosses a process boundary: the decision a continuation receives, and the
read models the CLI and the HTTP API print.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeVar

from approvals.status import ApprovalStatus, EventKind, NotificationKind, RunStatus


class Outcome(StrEnum):
    """What a resolved approval came to."""

    APPROVED = "approved"  # a person approved, or the deadline applied an "approved" default
    REJECTED = "rejected"  # a person rejected, or the deadline applied a "rejected" default
    TIMED_OUT = "timed_out"  # the deadline passed and the wait declared no default

    @property
    def approval_status(self) -> ApprovalStatus:
        """The approval status a decision with this outcome moves the approval to."""
        return ApprovalStatus(self.value)


class WaitJoin(BaseModel):
    """How one approval of a parallel wait (a group of waits) joins its siblings: the run resumes once, when
    all are settled, with every decision (or at the first rejection, when ``any_rejection_rejects``)."""

    model_config = ConfigDict(extra="forbid")

    #: The parallel wait's id (the same on every sibling).
    id: str
    #: This approval's place in the group (0-based); the continuation receives the decisions in this order.
    index: int = Field(ge=0)
    #: How many approvals the group has.
    size: int = Field(ge=1)
    #: True: the first rejection settles the group as rejected (the others are cancelled). False: the group
    #: settles when every approval is decided.
    any_rejection_rejects: bool = True


class ApprovalPolicy(BaseModel):
    """What an approval needs before its outcome is settled, and how people are chased. Durations in seconds.

    Declared on the wait step (``hitl.wait_for_approval.s(quorum=2, stages=[["legal"], ["finance"]], ...)``)
    and enforced by the engine for every channel.
    """

    model_config = ConfigDict(extra="forbid")

    #: Approvals from distinct people needed (in each stage) before the approval is approved.
    quorum: int = Field(1, ge=1, le=100)
    #: Sequential sign-off: the assignees (users or groups) of each stage, in order; empty means one stage
    #: whose assignees are the wait's ``assignees``.
    stages: list[list[str]] = Field(default_factory=list)
    #: True: any rejection rejects at once. False: rejected only when the quorum can no longer be reached.
    any_rejection_rejects: bool = True
    #: The run's requester may not decide their own request.
    forbid_requester: bool = False
    remind_after: float | None = Field(None, gt=0)
    remind_every: float | None = Field(None, gt=0)
    escalate_after: float | None = Field(None, gt=0)
    #: Users or groups added as assignees (and notified) at ``escalate_after``.
    escalate_to: list[str] = Field(default_factory=list)
    #: Data the continuation receives when the deadline applies an approved or rejected default.
    default_data: dict[str, Any] | None = None
    #: Set on the approvals of a parallel wait: how this one joins its siblings.
    join: WaitJoin | None = None


DECISION_TAG = "hitl.decision"


class VoteView(BaseModel):
    """One person's vote on an approval that needs several (quorum, sequential sign-off)."""

    stage: int
    actor: str
    outcome: Outcome
    comment: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    channel: str
    at: datetime


DataT = TypeVar("DataT", default=dict[str, Any])


class Decision(BaseModel, Generic[DataT]):
    """The typed value a continuation receives as its first argument when a waitpoint resolves.

    ``Decision[ReviewForm]`` in a step's signature makes ``data`` the parsed model (for approvals; a
    rejection or timeout carries whatever data it has, usually none, so ``data`` is then a dict); plain
    ``Decision`` keeps it a dict.

    ``subject`` is what was reviewed (the result of the step before the wait), so the continuation does
    not need to fetch it. ``defaulted`` is true when the deadline applied the wait's declared default.
    """

    model_config = ConfigDict(frozen=True)

    type: Literal["hitl.decision"] = "hitl.decision"
    approval_id: str
    run_id: str | None
    key: str
    outcome: Outcome
    subject: Any = None
    data: DataT = Field(default_factory=dict)  # type: ignore[assignment]  # the default suits the default type
    actor: str
    comment: str | None = None
    decided_at: datetime
    defaulted: bool = False
    #: False for a vote that did not settle the outcome yet (quorum, sequential sign-off); a continuation
    #: only ever receives settled decisions.
    settled: bool = True
    #: Every vote cast, when the approval needed more than one (quorum, stages), oldest first.
    votes: list[VoteView] = Field(default_factory=list)

    @property
    def approved(self) -> bool:
        """True when the outcome is :attr:`Outcome.APPROVED`."""
        return self.outcome is Outcome.APPROVED


class DecisionView(BaseModel):
    """A recorded decision, as the CLI and API show it."""

    outcome: Outcome
    data: dict[str, Any]
    actor: str
    comment: str | None
    channel: str
    decided_at: datetime


class ApprovalView(BaseModel):
    """An approval, as the CLI and API show it (``run_id`` and ``workflow`` are None for one created ahead
    that no wait step has taken yet)."""

    id: str
    run_id: str | None
    workflow: str | None
    key: str
    status: ApprovalStatus
    subject: Any
    assignees: list[str]
    deadline: datetime
    created_at: datetime
    resolved_at: datetime | None
    decision: DecisionView | None
    #: JSON Schema an approval's data must satisfy (declared by the wait), or None.
    decision_schema: dict[str, Any] | None = None
    #: The approval policy (quorum, stages, requester rule, reminders, escalation); defaults left out.
    policy: dict[str, Any] = Field(default_factory=dict)
    requester: str | None = None
    #: The current sign-off stage (0-based) and the votes cast so far.
    stage: int = 0
    votes: list[VoteView] = Field(default_factory=list)
    idempotency_key: str | None = None


class EventView(BaseModel):
    """One timeline entry of a run."""

    kind: EventKind
    name: str
    task_id: str | None
    detail: dict[str, Any]
    started_at: datetime | None
    at: datetime


class RunView(BaseModel):
    """A run with its approvals and timeline, as the CLI and API show it."""

    id: str
    workflow: str
    status: RunStatus
    idempotency_key: str | None
    payload: Any
    result: Any
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    approvals: list[ApprovalView] = Field(default_factory=list)
    timeline: list[EventView] = Field(default_factory=list)


class Notice(BaseModel):
    """What a notifier sends about one notification: the JSON body of a webhook, the text of an email.

    ``recipients`` are users (groups already expanded); ``assignees`` are the approval's assignees as
    declared (users and groups) after any escalation.
    """

    type: Literal["hitl.notice"] = "hitl.notice"
    kind: NotificationKind
    #: The reminder's number (1, 2, ...), or 1 for the escalation.
    seq: int
    approval_id: str
    run_id: str | None
    workflow: str | None
    key: str
    recipients: list[str]
    assignees: list[str]
    deadline: datetime
    subject: Any = None
    #: One line for people: what happened and what is asked.
    text: str


class NotificationView(BaseModel):
    """A notification and its delivery state, as ``hitl notifications list`` shows it."""

    id: int
    approval_id: str
    kind: NotificationKind
    seq: int
    recipients: list[str]
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    #: ``sent``; ``pending`` (not yet sent, will be tried again); ``failed`` (gave up after the last attempt).
    state: Literal["sent", "pending", "failed"]
    #: Notifiers that delivered it (a notice partly delivered is retried only on the others).
    delivered_by: list[str] = Field(default_factory=list)
