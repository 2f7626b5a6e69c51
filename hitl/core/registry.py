"""The registry of workflows: a name, a function that builds the Celery canvas, and an optional input model."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import Signature
from pydantic import BaseModel, ValidationError

from approvals.errors import InvalidPayload, UnknownWorkflow, WorkflowError
from hitl.infra.settings import get_settings

Builder = Callable[[Any], Signature]


@dataclass(frozen=True)
class Workflow:
    """A registered workflow: ``build(payload)`` returns the canvas a run executes.

    ``shape`` is the canvas pictured in one line (:func:`hitl.delivery.canvas.describe`), as built from a sample payload
    when the workflow was registered; None when the builder needs a real payload to build anything.
    """

    name: str
    build: Builder
    input_model: type[BaseModel] | None
    description: str
    shape: str | None = None

    def validate(self, payload: Any) -> Any:
        """Return ``payload`` validated by ``input_model`` (as JSON-mode data), or unchanged without one.

        Raises:
            InvalidPayload: the payload fails the input model, with pydantic's messages.
        """
        if self.input_model is None:
            return payload
        try:
            return self.input_model.model_validate(payload).model_dump(mode="json")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(payload)'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidPayload(f"payload for workflow {self.name!r} is invalid: {problems}") from exc


_workflows: dict[str, Workflow] = {}


B = TypeVar("B", bound=Builder)


def workflow(name: str, *, input: type[BaseModel] | None = None) -> Callable[[B], B]:
    """Register the decorated function as the builder of workflow ``name``.

    The function takes the (validated) payload and returns a Celery canvas: a linear chain of steps that may
    contain :func:`hitl.wait_for_approval` signatures. With ``input``, payloads are validated by that pydantic
    model before the run is created, and the builder receives the model's JSON-mode dump.

    Example::

        @hitl.workflow("content-review", input=ReviewRequest)
        def content_review(payload):
            return draft.s(payload) | hitl.wait_for_approval.s(key="editor-review", timeout="1h") | publish.s()
    """

    def register(fn: B) -> B:
        doc = (fn.__doc__ or "").strip().splitlines()
        _workflows[name] = Workflow(name, fn, input, doc[0] if doc else "", _shape_of(name, fn, input))
        return fn

    return register


def _shape_of(name: str, build: Builder, input_model: type[BaseModel] | None) -> str | None:
    """Build workflow ``name`` from a sample payload (the input model's defaults, else ``{}``) and return its
    shape; None when the builder cannot build from it (it needs a real payload, or a task it names is defined
    later). A canvas hitl cannot run is refused here, when the module registering it is imported.

    Raises:
        WorkflowError: the sample canvas has a shape hitl cannot run, a task that cannot take its arguments or
            invalid wait options (what :func:`hitl.delivery.canvas.compile_canvas` refuses).
    """
    from hitl.delivery.canvas import compile_canvas, describe

    try:
        sample: Any = input_model.model_construct().model_dump(mode="json") if input_model else {}
        canvas = build(sample)
    except Exception:  # a builder may need a real payload: it is checked at start instead
        return None
    try:
        compile_canvas(canvas, "registration")  # the checks of hitl start: shape, arguments, wait options
        return describe(canvas)
    except InvalidPayload as exc:  # (WorkflowError is one)
        raise WorkflowError(f"workflow {name!r} cannot be registered: {exc.message}") from None


def load_workflows() -> None:
    """Import ``HITL_WORKFLOW_MODULES`` so their workflows are registered.

    The current directory is on the import path first, as ``celery -A`` puts it, so a project's own modules
    are found by ``hitl`` commands as by its workers.

    Raises:
        WorkflowError: a module cannot be imported (its name and the reason, without the traceback).
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in get_settings().workflow_modules:
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise WorkflowError(f"cannot import workflow module {module!r} (HITL_WORKFLOW_MODULES): {exc}") from exc


def get_workflow(name: str) -> Workflow:
    """Return the workflow registered as ``name``.

    Raises:
        UnknownWorkflow: nothing is registered under ``name`` (the message lists what is).
    """
    load_workflows()
    try:
        return _workflows[name]
    except KeyError:
        known = ", ".join(sorted(_workflows)) or "none"
        raise UnknownWorkflow(f"no workflow named {name!r} (registered: {known})") from None


def all_workflows() -> list[Workflow]:
    """Return every registered workflow, sorted by name."""
    load_workflows()
    return [_workflows[n] for n in sorted(_workflows)]
