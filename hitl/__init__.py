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

Names are imported when first used (PEP 562), so ``import hitl`` and the ``hitl`` command start fast; ``hitl.app``
is the Celery application with every task of hitl registered (``celery -A hitl.app worker``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Where each public name lives.
_PUBLIC = {
    **dict.fromkeys(
        [
            "AlreadyDecided",
            "ApprovalCancelled",
            "ApprovalExpired",
            "ApprovalNotFound",
            "ControlFlow",
            "DomainError",
            "HitlError",
            "InfrastructureError",
            "InvalidDecision",
            "InvalidPayload",
            "InvalidTransition",
            "NotFound",
            "PayloadTooLarge",
            "RunNotFound",
            "Stop",
            "UnknownWorkflow",
            "UsageError",
            "WorkflowError",
        ],
        "approvals.errors",
    ),
    **dict.fromkeys(["ApprovalView", "Decision", "Outcome", "RunView"], "approvals.schemas"),
    **dict.fromkeys(["ApprovalStatus", "RunStatus"], "approvals.status"),
    **dict.fromkeys(["approve", "decide", "reject"], "hitl.core.completion"),
    "create_approval": "hitl.core.lookback",
    "workflow": "hitl.core.registry",
    **dict.fromkeys(["cancel", "start"], "hitl.core.runs"),
    **dict.fromkeys(["get_approval", "get_run", "list_approvals", "list_runs"], "hitl.core.views"),
    "parallel": "hitl.delivery.canvas",
    **dict.fromkeys(["Step", "step"], "hitl.worker.steps"),
    "wait_for_approval": "hitl.worker.waits",
    "app": "hitl.infra.celery_app",
}

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


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hitl' has no attribute {name!r}")
    if module.startswith("hitl."):
        importlib.import_module("hitl.worker")  # hitl's tasks and signal handlers, registered once
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:
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
    from hitl.core.completion import approve, decide, reject
    from hitl.core.lookback import create_approval
    from hitl.core.registry import workflow
    from hitl.core.runs import cancel, start
    from hitl.core.views import get_approval, get_run, list_approvals, list_runs
    from hitl.delivery.canvas import parallel
    from hitl.infra.celery_app import app
    from hitl.worker.steps import Step, step
    from hitl.worker.waits import wait_for_approval
