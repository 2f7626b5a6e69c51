"""The approval domain: statuses, their allowed transitions, models, schemas and errors.

This package imports neither Celery nor a web framework. The engine in :mod:`hitl` binds it to
Celery, the database session, the CLI and the HTTP API.
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
    NotAllowed,
    NotFound,
    PayloadTooLarge,
    RunNotFound,
    UnknownWorkflow,
    UsageError,
)
from approvals.schemas import Decision, Outcome
from approvals.status import ApprovalStatus, EventKind, RunStatus

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
