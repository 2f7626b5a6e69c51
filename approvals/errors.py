"""The one exception tree of hitl.

Each class's docstring is its default message. Domain errors (``DomainError``) are the user's to fix
and map to CLI exit code 1 (2 for ``UsageError`` subclasses) and HTTP 404/409/403/413/422;
``InfrastructureError`` wraps a failure of the database or broker and is raised ``from`` the original.
"""

from __future__ import annotations


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
