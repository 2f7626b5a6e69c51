"""Turning a workflow's Celery canvas into the plain, JSON-safe shapes hitl stores and sends.

hitl supports linear chains (``a.s() | b.s() | wait_for_approval.s(...) | c.s()``): a continuation is the
list of signature dicts still to run, in run order. Every signature carries the run id in its kwargs
(``run_id``), which is how a step finds its run and how Flower shows which run a task belongs to.
"""

from __future__ import annotations

from typing import Any

from celery import Signature, signature
from celery.canvas import _chain

from approvals.errors import InvalidPayload
from hitl.app import app

RUN_ID_KWARG = "run_id"
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


def apply_chain(sigs: list[dict[str, Any]], args: list[Any], task_id: str) -> None:
    """Send the first signature with ``args`` prepended and the rest as its chain (Celery's own shape).

    The first task gets ``task_id``; the message's ``chain`` field holds the rest in reverse order, as
    Celery's tracer pops the next signature from the end.
    """
    first = signature(sigs[0], app=app)
    rest = [dict(signature(s, app=app)) for s in reversed(sigs[1:])]
    first.apply_async(tuple(args), task_id=task_id, chain=rest or None)
