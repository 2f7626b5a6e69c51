"""Pydantic models of what crosses a process boundary: the decision a continuation receives, and the
read models the CLI and the HTTP API print.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from approvals.status import ApprovalStatus, EventKind, RunStatus


class Outcome(StrEnum):
    """What a resolved approval came to."""

    APPROVED = "approved"  # a person approved, or the deadline applied an "approved" default
    REJECTED = "rejected"  # a person rejected, or the deadline applied a "rejected" default
    TIMED_OUT = "timed_out"  # the deadline passed and the wait declared no default

    @property
    def approval_status(self) -> ApprovalStatus:
        """The approval status a decision with this outcome moves the approval to."""
        return ApprovalStatus(self.value)


DECISION_TAG = "hitl.decision"


class Decision(BaseModel):
    """The typed value a continuation receives as its first argument when a waitpoint resolves.

    ``subject`` is what was reviewed (the result of the step before the wait), so the continuation does
    not need to fetch it. ``defaulted`` is true when the deadline applied the wait's declared default.
    """

    model_config = ConfigDict(frozen=True)

    type: Literal["hitl.decision"] = "hitl.decision"
    approval_id: str
    run_id: str
    key: str
    outcome: Outcome
    subject: Any = None
    data: dict[str, Any] = Field(default_factory=dict)
    actor: str
    comment: str | None = None
    decided_at: datetime
    defaulted: bool = False

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
    """An approval, as the CLI and API show it."""

    id: str
    run_id: str
    workflow: str
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
