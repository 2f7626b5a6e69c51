"""Waits: store pending approvals with the rest of the run, then end the chain.

While a run waits, only database rows hold it: no worker, no ETA message, no broker key. The deadline is a
column the beat sweep queries (see :mod:`hitl.completion`).

A wait is stored by :func:`store_waits`, in the transaction of whoever reaches it: the worker that ran the task
before it (a plain task's success, :mod:`hitl.signals`; a step's completion, :mod:`hitl.steps`), or the wait's own
task ``hitl.wait_for_approval`` when it follows a group (the chord's body) or starts a continuation. What the wait
asks was validated when the run started (:mod:`hitl.waitspec`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from celery import Signature
from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from approvals.errors import InvalidPayload
from approvals.models import Approval, OutboxMessage, utcnow
from approvals.status import ApprovalStatus, EventKind, RunStatus
from approvals.transitions import add_event, move_run, move_run_returning
from hitl import completion, lookback, outbox
from hitl.ids import new_id
from hitl.jsonsafe import check_size
from hitl.steps import Step, Stop, step
from hitl.waitspec import WAIT_OPTIONS, decision_schema_of

#: The approval row, by a Core INSERT (the ORM's unit of work costs more than the statement on this path).
_INSERT_APPROVAL = insert(cast(Table, Approval.__table__))

__all__ = ["WAIT_OPTIONS", "decision_schema_of", "store_waits", "wait_for_approval"]


def store_waits(s: Session, run_id: str, task_id: str, subject: Any, header: dict[str, Any]) -> list[OutboxMessage]:
    """In ``s``: store the approval(s) of a wait reached by task ``task_id`` of run ``run_id``, and move the run to
    ``waiting``.

    Args:
        s: the transaction of the task that reached the wait.
        run_id: the run.
        task_id: the task that reached it (its deterministic id keys the approvals: a second delivery stores
            nothing).
        subject: what is to be reviewed (the task's result).
        header: the compiled wait (:data:`hitl.canvas.HEADER_WAIT`): ``{"waits": [spec, ...], "join": ...,
            "continuation": canvas | None}``.

    Returns:
        Outbox rows to publish after commit: empty, except when a wait took an approval created ahead that
        was already decided (the run then goes on at once).

    Raises:
        InvalidPayload: the subject is over ``HITL_MAX_PAYLOAD_BYTES``, or an approval created ahead under the
            wait's idempotency key belongs to another run.
        Stop: the approval created ahead was cancelled (the run ends as cancelled).
    """
    check_size(subject, "approval subject")
    if s.scalar(select(Approval.id).where(Approval.step_task_id == task_id)):
        return []  # a second delivery: the approvals are stored
    specs: list[dict[str, Any]] = header["waits"]
    continuation = [header["continuation"]] if header.get("continuation") else []
    join = header.get("join")
    if len(specs) == 1 and join is None and specs[0].get("idempotency_key"):
        taken = _take_ahead(s, run_id, task_id, subject, specs[0], continuation)
        if taken is not None:
            return taken
    moved, requester = move_run_returning(s, run_id, RunStatus.WAITING, "requester")
    if not moved:
        return []  # the run was cancelled or has ended meanwhile: nothing to wait for
    join_id = new_id() if join is not None else None
    now = utcnow()
    for index, spec in enumerate(specs):
        policy = dict(spec["policy"])
        if join_id is not None:
            policy["join"] = {
                "id": join_id,
                "index": index,
                "size": len(specs),
                "any_rejection_rejects": bool(join.get("any_rejection_rejects", True)),  # type: ignore[union-attr]
            }
        deadline = now + timedelta(seconds=spec["timeout"])
        approval_id = new_id()
        s.execute(
            _INSERT_APPROVAL,
            {
                "id": approval_id,
                "run_id": run_id,
                "key": spec["key"],
                "status": ApprovalStatus.PENDING,
                "step_task_id": task_id if index == 0 else f"{task_id}/{index}",
                "subject": subject,
                "assignees": list(spec["assignees"]),
                "deadline": deadline,
                "continuation": continuation,
                "on_reject": [spec["on_reject"]] if spec.get("on_reject") else None,
                "on_timeout": [spec["on_timeout"]] if spec.get("on_timeout") else None,
                "timeout_default": spec.get("default"),
                "idempotency_key": spec.get("idempotency_key") if join_id is None else None,
                "decision_schema": spec.get("decision_schema"),
                "policy": policy,
                "requester": requester,
                "next_reminder_at": _after(now, policy.get("remind_after")),
                "escalate_at": _after(now, policy.get("escalate_after")),
                "created_at": now,
            },
        )
        detail: dict[str, Any] = {
            "approval_id": approval_id,
            "deadline": deadline.isoformat(),
            "assignees": list(spec["assignees"]),
        }
        if join_id is not None:
            detail["parallel"] = {"id": join_id, "index": index, "size": len(specs)}
        add_event(s, run_id=run_id, kind=EventKind.WAITING, name=spec["key"], task_id=task_id, detail=detail)
    return []


def _after(now: Any, seconds: float | None) -> Any:
    return now + timedelta(seconds=seconds) if seconds else None


def _take_ahead(
    s: Session, run_id: str, task_id: str, subject: Any, spec: dict[str, Any], continuation: list[Any]
) -> list[OutboxMessage] | None:
    """Take the approval created ahead under the wait's idempotency key: wait on it if pending, else go on at once
    with its decision. None when no approval was created under that key."""
    approval = lookback.take(
        s,
        spec["idempotency_key"],
        run_id,
        task_id,
        {
            "continuation": continuation,
            "on_reject": [spec["on_reject"]] if spec.get("on_reject") else None,
            "on_timeout": [spec["on_timeout"]] if spec.get("on_timeout") else None,
            "timeout_default": spec.get("default"),
            "subject": subject,
        },
    )
    if approval is None:
        return None
    if approval.status is ApprovalStatus.PENDING:
        move_run(s, run_id, RunStatus.WAITING)
        return []
    if approval.status is ApprovalStatus.CANCELLED:
        raise Stop(RunStatus.CANCELLED, {"approval_id": approval.id}, reason="the approval was cancelled")
    decision = completion.decision_of(approval).model_copy(update={"run_id": run_id})
    add_event(
        s,
        run_id=run_id,
        kind=EventKind.RESOLVED,
        name=approval.key,
        detail={
            "approval_id": approval.id,
            "outcome": decision.outcome.value,
            "actor": decision.actor,
            "comment": decision.comment,
            "decided_ahead": True,
        },
    )
    sigs = completion.continuation_of(s, approval, decision)
    if not sigs:  # the run ended with the outcome (nothing after the wait, or a failed default)
        return []
    move_run(s, run_id, RunStatus.RUNNING)
    args = [decision.model_dump(mode="json")]
    return [outbox.enqueue(s, run_id, completion.resume_task_id(approval.id), sigs, args)]


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
