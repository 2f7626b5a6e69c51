"""Waits: store pending approvals with the rest of the run, then end the chain.

While a run waits, only database rows hold it: no worker, no ETA message, no broker key. The deadline is a
column the beat sweep queries (see :mod:`hitl.core.completion`).

A wait is stored by :func:`hitl.core.waiting.store_waits`, in the transaction of whoever reaches it: the worker that
ran the task before it (a plain task's success, :mod:`hitl.worker.signals`; a step's completion,
:mod:`hitl.worker.steps`), or the wait's own task ``hitl.wait_for_approval`` (this module) when it follows a group
(the chord's body) or starts a continuation. What the wait asks was validated when the run started
(:mod:`hitl.delivery.waitspec`).
"""

from __future__ import annotations

from typing import Any

from celery import Signature

from approvals.errors import InvalidPayload, Stop
from approvals.status import RunStatus
from hitl.core.waiting import store_waits
from hitl.delivery.waitspec import WAIT_OPTIONS, decision_schema_of
from hitl.worker.steps import Step, step

__all__ = ["WAIT_OPTIONS", "WaitStep", "decision_schema_of", "finish_run", "store_waits", "wait_for_approval"]


class WaitStep(Step):
    """The wait's task class. ``.s(decision=Model)`` turns the model into its JSON Schema when the signature is
    made, so only JSON travels and is stored; unknown options are refused at once."""

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """Celery's ``s()``, with ``decision`` turned into a JSON Schema."""
        return super().s(*args, **_checked(kwargs))

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """Celery's ``si()``, with ``decision`` turned into a JSON Schema."""
        return super().si(*args, **_checked(kwargs))

    def wait_header(self, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The compiled wait this task stores: its ``hitl_wait`` kwarg."""
        value = kwargs.get("hitl_wait")
        return value if isinstance(value, dict) else None


def _checked(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - WAIT_OPTIONS - {"hitl_wait"})
    if unknown:
        raise InvalidPayload(f"wait_for_approval does not take {', '.join(unknown)}")
    if kwargs.get("decision") is not None:
        kwargs["decision"] = decision_schema_of(kwargs["decision"])
    return kwargs


@step(name="hitl.wait_for_approval", bind=True, base=WaitStep)
def wait_for_approval(self: Any, subject: Any = None, **options: Any) -> Any:
    """Pause the run for a human decision on ``subject`` (the previous task's result).

    Use it in a workflow's chain: ``draft.s(t) | wait_for_approval.s(key="editor-review", timeout="1h") |
    publish.s()``; a group of waits (``group(wait_a, wait_b)`` or :func:`hitl.parallel`) is a parallel wait. The
    options are validated when the run starts (``hitl start`` refuses bad ones, exit 2):

    Args:
        subject: what is to be reviewed; shown by ``hitl approvals show`` and passed on in ``Decision.subject``.

    Keyword Args:
        key: names this waitpoint within the workflow (e.g. ``"editor-review"``).
        timeout: seconds, or ``"30s"``/``"15m"``/``"1h"``/``"2d"``/``"1w"`` (at most ten years); default
            ``HITL_DEFAULT_TIMEOUT`` (one day). Every wait has a deadline.
        assignees: who is asked (users or groups); only they may decide.
        on_reject: a signature or chain resumed instead of the continuation when rejected.
        on_timeout: a signature or chain resumed instead of the continuation at the deadline.
        default: ``"approved"``, ``"rejected"`` or ``"failed"``: applied at the deadline instead of
            ``timed_out`` (``"failed"`` ends the run as failed; the others resume with ``defaulted=True``).
        default_data: the data the continuation receives with an approved or rejected default.
        quorum: approvals from distinct people needed (in each stage).
        stages: sequential sign-off, e.g. ``[["legal"], ["finance"]]``.
        any_rejection_rejects: with a quorum, whether one rejection rejects (default).
        forbid_requester: the person who started the run may not decide it.
        remind_after: remind the assignees this long after the approval was created (a duration, as ``timeout``).
        remind_every: and again every this long until it is decided (never after the deadline).
        escalate_after: this long after creation, add ``escalate_to`` to the assignees and notify them.
        escalate_to: users or groups who may decide from then on.
        idempotency_key: take the approval created ahead under this key (:func:`hitl.create_approval`).
        decision: a pydantic model class or a JSON Schema dict that an approval's data must satisfy.

    Returns:
        The subject. The chain ends here; the continuation is stored with the approval and resumed by the
        completion handler with a :class:`~approvals.schemas.Decision` (a list of them after a parallel wait).

    Raises:
        InvalidPayload: a subject over the size limit, or options of a wait not compiled into a run.
    """
    if "hitl_wait" not in options:
        raise InvalidPayload("wait_for_approval runs only as part of a workflow started with hitl.start")
    return subject


@step(name="hitl.finish_run")
def finish_run(result: Any = None, *, error: str | None = None, failed_task: str | None = None) -> Any:
    """End the run: the chord body after a workflow's trailing group (``result`` is the list of the group's
    results), or the end a plain task's worker could not record (the database was down). With ``error``, the run
    fails with it (``failed_task`` names the task that failed)."""
    if error is not None:
        raise Stop(RunStatus.FAILED, None, reason=error if failed_task is None else f"{failed_task}: {error}")
    return result
