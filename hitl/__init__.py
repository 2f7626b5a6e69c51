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
    ControlFlow,
    DomainError,
    HitlError,
    InfrastructureError,
    InvalidDecision,
    InvalidPayload,
    InvalidTransition,
    NotFound,
    PayloadTooLarge,
    RunNotFound,
    Stop,
    UnknownWorkflow,
    UsageError,
    WorkflowError,
)
from approvals.schemas import ApprovalView, Decision, Outcome, RunView
from approvals.status import ApprovalStatus, RunStatus
from hitl.app import app  # (hitl.app imports hitl.worker: every task of hitl is registered)
from hitl.core.completion import approve, decide, reject
from hitl.core.lookback import create_approval
from hitl.core.registry import workflow
from hitl.core.runs import cancel, start
from hitl.core.views import get_approval, get_run, list_approvals, list_runs
from hitl.delivery.canvas import parallel
from hitl.worker.steps import Step, step
from hitl.worker.waits import wait_for_approval

__all__ = [
    "AlreadyDecided",
    "ApprovalCancelled",
    "ApprovalExpired",
    "ApprovalNotFound",
    "ApprovalStatus",
    "ApprovalView",
    "ControlFlow",
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
