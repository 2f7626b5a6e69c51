"""Which continuation a resolved approval resumes, and with what outcome.

Rule (documented in README, "Waits"): approved resumes ``continuation``; rejected resumes ``on_reject`` when
the wait declared one, else ``continuation``; at the deadline a declared ``timeout_default`` turns the
timeout into that outcome (``defaulted=True``) and proceeds as above; otherwise ``on_timeout`` when declared,
else ``continuation``. The continuation always gets the :class:`~approvals.schemas.Decision` and branches
on ``outcome``.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from approvals.errors import InvalidDecision, InvalidPayload
from approvals.models import Approval
from approvals.schemas import Outcome

#: ``default="failed"`` on a wait: the deadline ends the run as failed instead of resuming it.
FAIL_DEFAULT = "failed"


def timeout_outcome(approval: Approval) -> tuple[Outcome, bool]:
    """Return the outcome a due approval resolves to, and whether the wait's default was applied.

    A ``"failed"`` default resolves as ``timed_out`` (defaulted); the completion handler then fails the run.
    """
    if approval.timeout_default == FAIL_DEFAULT:
        return Outcome.TIMED_OUT, True
    if approval.timeout_default:
        return Outcome(approval.timeout_default), True
    return Outcome.TIMED_OUT, False


def default_data(approval: Approval) -> dict[str, Any]:
    """Return the data a defaulted decision carries: the wait's ``default_data``, or nothing."""
    value = (approval.policy or {}).get("default_data")
    return dict(value) if isinstance(value, dict) else {}


def continuation_for(approval: Approval, outcome: Outcome) -> list[Any]:
    """Return the signature dicts (run order) to resume for ``outcome``; may be empty (the run ends)."""
    if outcome is Outcome.REJECTED and approval.on_reject is not None:
        return approval.on_reject
    if outcome is Outcome.TIMED_OUT and approval.on_timeout is not None:
        return approval.on_timeout
    return approval.continuation


def check_decision_schema(schema: dict[str, Any]) -> None:
    """Check that ``schema`` is a valid JSON Schema (draft 2020-12, what pydantic emits) for decision data.

    Raises:
        InvalidPayload: it is not a valid schema, or it does not describe a JSON object.
    """
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidPayload(f"the decision schema is not a valid JSON Schema: {exc.message}") from None
    if schema.get("type", "object") != "object":
        raise InvalidPayload('a decision schema must describe a JSON object ("type": "object")')


def validate_decision_data(schema: dict[str, Any] | None, data: dict[str, Any], outcome: Outcome) -> None:
    """Check an approval's decision ``data`` against the JSON Schema its wait declared.

    Only approvals are held to the schema: a rejection may carry any object (usually nothing but a reason),
    since the form describes what the continuation needs to go ahead.

    Raises:
        InvalidDecision: ``data`` fails the schema; ``details`` lists each failure as ``{"loc", "msg"}``.
    """
    if schema is None or outcome is not Outcome.APPROVED:
        return
    errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        details = [{"loc": "/".join(str(p) for p in e.absolute_path) or "(root)", "msg": e.message} for e in errors]
        summary = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
        raise InvalidDecision(f"decision data fails the wait's schema: {summary}", details=details)
