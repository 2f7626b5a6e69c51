"""Which continuation a resolved approval resumes, and with what outcome.

Rule (documented in README, "Waits"): approved resumes ``continuation``; rejected resumes ``on_reject`` when
the wait declared one, else ``continuation``; at the deadline a declared ``timeout_default`` turns the
timeout into that outcome (``defaulted=True``) and proceeds as above; otherwise ``on_timeout`` when declared,
else ``continuation``. The continuation always gets the :class:`~approvals.schemas.Decision` and branches
on ``outcome``.
"""

from __future__ import annotations

from typing import Any

from approvals.models import Approval
from approvals.schemas import Outcome


def timeout_outcome(approval: Approval) -> tuple[Outcome, bool]:
    """Return the outcome a due approval resolves to, and whether the wait's default was applied."""
    if approval.timeout_default:
        return Outcome(approval.timeout_default), True
    return Outcome.TIMED_OUT, False


def continuation_for(approval: Approval, outcome: Outcome) -> list[Any]:
    """Return the signature dicts (run order) to resume for ``outcome``; may be empty (the run ends)."""
    if outcome is Outcome.REJECTED and approval.on_reject is not None:
        return approval.on_reject
    if outcome is Outcome.TIMED_OUT and approval.on_timeout is not None:
        return approval.on_timeout
    return approval.continuation
