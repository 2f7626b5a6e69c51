"""hitl: human-in-the-loop approvals for Celery.

A workflow is a Celery canvas with waits in it: any Celery tasks (plain ones, or journaled ``@hitl.step`` steps),
groups and chords. A wait stores a pending approval and ends the chain; a decision (or the deadline) resumes the
rest exactly once, with a typed :class:`~approvals.schemas.Decision`. Public API::

    import hitl

    @hitl.step(name="tasks.draft")
    def draft(topic): ...

    @hitl.workflow("content-review")
    def content_review(payload):
        return draft.s(payload["topic"]) | hitl.wait_for_approval.s(key="review", timeout="1h") | publish.s()

    run_id = hitl.start("content-review", {"topic": "tides"}, idempotency_key="req-42")
    hitl.approve(approval_id, actor="alice", comment="ok")
"""

from __future__ import annotations

from approvals.errors import (
    AlreadyDecided,
    ApprovalCancelled,
    ApprovalExpired,
    ApprovalNotFound,
    DomainError,
    HitlError,
    InfrastructureError,
    InvalidDecision,
    InvalidPayload,
    InvalidTransition,
    NotFound,
    PayloadTooLarge,
    RunNotFound,
    UnknownWorkflow,
    UsageError,
    WorkflowError,
)
from approvals.schemas import ApprovalView, Decision, Outcome, RunView
from approvals.status import ApprovalStatus, RunStatus
from hitl import signals as _signals  # noqa: F401 - plain tasks of a run: their success and failure
from hitl.app import app
from hitl.canvas import parallel
from hitl.completion import approve, decide, reject
from hitl.lookback import create_approval
from hitl.registry import workflow
from hitl.runs import cancel, start
from hitl.steps import Step, Stop, step
from hitl.views import get_approval, get_run, list_approvals, list_runs
from hitl.waits import finish_run as _finish_run  # noqa: F401 - registers hitl.finish_run
from hitl.waits import wait_for_approval

__all__ = [
    "AlreadyDecided",
    "ApprovalCancelled",
    "ApprovalExpired",
    "ApprovalNotFound",
    "ApprovalStatus",
    "ApprovalView",
    "Decision",
    "DomainError",
    "HitlError",
    "InfrastructureError",
    "InvalidDecision",
    "InvalidPayload",
    "InvalidTransition",
    "NotFound",
    "Outcome",
    "PayloadTooLarge",
    "RunNotFound",
    "RunStatus",
    "RunView",
    "Step",
    "Stop",
    "UnknownWorkflow",
    "UsageError",
    "WorkflowError",
    "app",
    "approve",
    "cancel",
    "create_approval",
    "decide",
    "get_approval",
    "get_run",
    "list_approvals",
    "list_runs",
    "parallel",
    "reject",
    "start",
    "step",
    "wait_for_approval",
    "workflow",
]
