"""Turning a workflow's Celery canvas into the plain, JSON-safe shapes hitl stores and sends.

hitl supports linear chains (``a.s() | b.s() | wait_for_approval.s(...) | c.s()``): a continuation is the
list of signature dicts still to run, in run order. Every signature carries the run id in its kwargs
(``run_id``), which is how a step finds its run and how Flower shows which run a task belongs to.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Signature, signature
from celery.canvas import _chain

from approvals.errors import InvalidPayload
from hitl.app import app

RUN_ID_KWARG = "run_id"
_TASK_ID_NAMESPACE = uuid.UUID("6f1c3a52-58e4-4c55-9a57-0f0e6c3f4d10")
#: Wait-step kwargs that hold canvases of their own (bound to the run like the main chain).
NESTED_CANVAS_KWARGS = ("on_reject", "on_timeout")


def flatten(canvas: Signature | dict[str, Any]) -> list[Signature]:
    """Return the task signatures of a linear chain (or of a single task signature), in run order.

    Raises:
        InvalidPayload: the canvas holds a group or chord, which hitl does not pause and resume.
    """
    sig = signature(canvas)
    if isinstance(sig, _chain):
        out: list[Signature] = []
        for task in sig.tasks:
            out.extend(flatten(task))
        return out
    if sig.get("subtask_type"):
        raise InvalidPayload(f"hitl workflows are linear chains; {sig.get('subtask_type')} is not supported")
    return [sig]


def bind_run(canvas: Signature | dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """Return the canvas as signature dicts in run order, each with ``run_id`` in its kwargs."""
    out: list[dict[str, Any]] = []
    for sig in flatten(canvas):
        sig = sig.clone()
        sig.kwargs[RUN_ID_KWARG] = run_id
        for name in NESTED_CANVAS_KWARGS:
            nested = sig.kwargs.get(name)
            if nested is not None:
                sig.kwargs[name] = bind_run(nested, run_id)
        out.append(dict(sig))
    return out


def as_sig_list(value: Any) -> list[dict[str, Any]] | None:
    """Normalise an ``on_reject``/``on_timeout`` value (a signature, chain or list of dicts) to a list."""
    if value is None:
        return None
    if isinstance(value, list):
        return [dict(signature(v)) for v in value]
    return [dict(s) for s in flatten(value)]


def child_task_id(parent: str, index: int) -> str:
    """The task id of the ``index``-th signature sent on behalf of ``parent`` (a uuid5: same inputs, same id).

    Deterministic ids are what let a step tell a second delivery of itself from a new step (see
    :mod:`hitl.steplog`): a re-sent chain carries the same ids as the first one.
    """
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{parent}/{index}"))


def with_task_ids(sigs: list[dict[str, Any]], parent: str, first_id: str | None = None) -> list[dict[str, Any]]:
    """Return the signature dicts ``sigs`` with deterministic task ids: ``first_id`` for the first if given; a
    signature that already has an id (it was sent before, as part of a chain) keeps it; others get
    :func:`child_task_id` of ``parent``. A dict that gets an id is copied (``sigs`` is not changed); the rest
    are returned as they are (cloning each as a ``Signature`` cost more than sending it)."""
    out = []
    for i, d in enumerate(sigs):
        options = d.get("options") or {}
        if i == 0 and first_id:
            task_id = first_id
        elif "task_id" in options:
            out.append(d)
            continue
        else:
            task_id = child_task_id(parent, i)
        out.append({**d, "options": {**options, "task_id": task_id}})
    return out


def apply_chain(sigs: list[dict[str, Any]], args: list[Any], task_id: str, producer: Any = None) -> None:
    """Send the first signature with ``args`` prepended and the rest as its chain (Celery's own shape).

    The first task gets ``task_id``, the others ids derived from it; the message's ``chain`` field holds the
    rest in reverse order, as Celery's tracer pops the next signature from the end. ``producer`` is a kombu
    producer to send with (default: one from the app's pool).
    """
    first, *rest = with_task_ids(sigs, task_id, task_id)
    options: dict[str, Any] = {"producer": producer} if producer is not None else {}
    signature(first, app=app).apply_async(tuple(args), chain=rest[::-1] or None, **options)
