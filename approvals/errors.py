"""hitl's exceptions: one tree of errors, and apart from it the control-flow signals.

Errors (``HitlError``): each class's docstring is its default message. Domain errors (``DomainError``) are the
user's to fix and map to CLI exit code 1 (2 for ``UsageError`` subclasses) and HTTP 404/409/403/413/422;
``InfrastructureError`` wraps a failure of the database or broker and is raised ``from`` the original.
Control-flow signals (``ControlFlow``) are not errors: raised on purpose and caught by hitl itself, they never
reach a user as a failure (``except HitlError`` does not catch them).

.. code-block:: text

    HitlError
    ├── DomainError
    │   ├── NotFound
    │   │   ├── ApprovalNotFound
    │   │   ├── RunNotFound
    │   │   └── UnknownWorkflow
    │   ├── InvalidTransition
    │   │   ├── AlreadyDecided
    │   │   ├── ApprovalExpired
    │   │   ├── ApprovalCancelled
    │   │   └── LinkUsed
    │   ├── NotAllowed
    │   ├── Unauthenticated
    │   ├── LinkInvalid
    │   └── UsageError
    │       ├── InvalidDecision
    │       ├── InvalidPayload
    │       │   └── WorkflowError
    │       ├── InvalidRequest
    │       ├── InvalidSettings
    │       └── PayloadTooLarge
    └── InfrastructureError
        ├── BrokerUnavailable
        ├── DatabaseUnavailable
        ├── SchemaOutdated
        └── NotifierFailed

    ControlFlow
    ├── Stop          a step ends its run now, with a terminal status (public: hitl.Stop)
    ├── Replaced      a step is done and a canvas is sent in its place (Step.replace)
    └── LostClaim     another delivery of the step finished first (its transaction rolls back)
"""

from __future__ import annotations

from typing import Any

from approvals.status import RunStatus


class HitlError(Exception):
    """hitl failed."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str | None = None, *, details: list[dict[str, str]] | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip().splitlines()[0]
        #: Itemised problems (``{"loc": ..., "msg": ...}``), e.g. each field failing a decision schema.
        self.details = details or []
        super().__init__(self.message)

    @property
    def code(self) -> str:
        """A stable snake_case name of the error for API clients (``already_decided``, ``run_not_found``)."""
        return "".join(f"_{c.lower()}" if c.isupper() else c for c in type(self).__name__).lstrip("_")


class DomainError(HitlError):
    """The request cannot be carried out."""

    http_status = 409


class NotFound(DomainError):
    """Not found."""

    http_status = 404


class ApprovalNotFound(NotFound):
    """No approval has that id."""


class RunNotFound(NotFound):
    """No run has that id."""


class UnknownWorkflow(NotFound):
    """No workflow is registered under that name."""


class InvalidTransition(DomainError):
    """That status change is not allowed from the current status."""


class AlreadyDecided(InvalidTransition):
    """The approval was already decided."""


class ApprovalExpired(InvalidTransition):
    """The approval's deadline has passed; it no longer takes decisions."""


class ApprovalCancelled(InvalidTransition):
    """The approval was cancelled with its run."""


class NotAllowed(DomainError):
    """You are not allowed to do that."""

    http_status = 403


class Unauthenticated(DomainError):
    """Authentication is required: send a valid API key or token as "Authorization: Bearer <key>"."""

    http_status = 401


class LinkInvalid(DomainError):
    """The link or token is not valid: it was altered, has expired, or was made for another approval."""

    http_status = 403


class LinkUsed(InvalidTransition):
    """The link was already used; a one-click link decides once."""


class UsageError(DomainError):
    """The input is not valid."""

    exit_code = 2
    http_status = 422


class InvalidDecision(UsageError):
    """The decision's data is not valid."""


class InvalidPayload(UsageError):
    """The payload is not valid."""


class InvalidRequest(UsageError):
    """The request is not valid (an HTTP body that is not strict JSON, a parameter out of range)."""


class WorkflowError(InvalidPayload):
    """The workflow's canvas has a shape hitl cannot run (a wait inside a group of other tasks, say), or a task
    in it cannot take the arguments it would get."""


class InvalidSettings(UsageError):
    """A HITL_* setting has a value that is not allowed."""


class PayloadTooLarge(UsageError):
    """The payload is larger than the configured limit."""

    http_status = 413


class InfrastructureError(HitlError):
    """The database or the broker failed."""

    http_status = 503


class BrokerUnavailable(InfrastructureError):
    """The broker could not be reached."""


class DatabaseUnavailable(InfrastructureError):
    """The database could not be reached."""


class SchemaOutdated(InfrastructureError):
    """The database's schema is not the one this hitl needs: run `hitl db upgrade`."""


class NotifierFailed(InfrastructureError):
    """A notifier could not deliver a notice; it is retried later."""


class ControlFlow(Exception):
    """Base of hitl's control-flow signals (see the module docstring): raised on purpose, caught by hitl."""


class Stop(ControlFlow):
    """Raised inside a step to end its run now with ``status`` (e.g. rejected) and ``result``.

    The rest of the chain is not run. ``reason`` is recorded as the run's error text.

    Raises:
        ValueError: ``status`` is not terminal.
    """

    def __init__(self, status: RunStatus | str, result: Any = None, reason: str | None = None) -> None:
        self.status = RunStatus(status)
        if not self.status.terminal:
            raise ValueError(f"Stop needs a terminal status, not {self.status.value}")
        self.result = result
        self.reason = reason
        super().__init__(f"run stopped as {self.status.value}")


class Replaced(ControlFlow):
    """Raised by ``Step.replace``: the step is done and ``canvas`` (compiled) is sent in its place."""

    def __init__(self, canvas: dict[str, Any]) -> None:
        super().__init__("replaced")
        self.canvas = canvas


class LostClaim(ControlFlow):
    """Another delivery of this step finished first; this delivery's work was rolled back."""
