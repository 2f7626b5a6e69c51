"""The approval domain: statuses, their allowed transitions, models, schemas and errors.

This package imports neither Celery nor a web framework. The engine in :mod:`hitl` binds it to
Celery, the database session, the CLI and the HTTP API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Where each name of the package lives (imported when first used, PEP 562: ``approvals.status`` alone stays light).
_NAMES = {
    "AlreadyDecided": "approvals.errors",
    "ApprovalCancelled": "approvals.errors",
    "ApprovalExpired": "approvals.errors",
    "ApprovalNotFound": "approvals.errors",
    "ApprovalStatus": "approvals.status",
    "Decision": "approvals.schemas",
    "DomainError": "approvals.errors",
    "EventKind": "approvals.status",
    "HitlError": "approvals.errors",
    "InfrastructureError": "approvals.errors",
    "InvalidDecision": "approvals.errors",
    "InvalidPayload": "approvals.errors",
    "InvalidTransition": "approvals.errors",
    "NotAllowed": "approvals.errors",
    "NotFound": "approvals.errors",
    "Outcome": "approvals.schemas",
    "PayloadTooLarge": "approvals.errors",
    "RunNotFound": "approvals.errors",
    "RunStatus": "approvals.status",
    "UnknownWorkflow": "approvals.errors",
    "UsageError": "approvals.errors",
}

__all__ = [
    "AlreadyDecided",
    "ApprovalCancelled",
    "ApprovalExpired",
    "ApprovalNotFound",
    "ApprovalStatus",
    "Decision",
    "DomainError",
    "EventKind",
    "HitlError",
    "InfrastructureError",
    "InvalidDecision",
    "InvalidPayload",
    "InvalidTransition",
    "NotAllowed",
    "NotFound",
    "Outcome",
    "PayloadTooLarge",
    "RunNotFound",
    "RunStatus",
    "UnknownWorkflow",
    "UsageError",
]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'approvals' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
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
        NotAllowed,
        NotFound,
        PayloadTooLarge,
        RunNotFound,
        UnknownWorkflow,
        UsageError,
    )
    from approvals.schemas import Decision, Outcome
    from approvals.status import ApprovalStatus, EventKind, RunStatus
