"""Journaled steps: Celery tasks that keep a record in the run. The wait's own task is one of them.

A workflow may hold any Celery task; hitl does no database work for a plain one. A journaled step
(``@hitl.step``, base class :class:`Step`) adds, at one read and one write transaction per delivery: before its
body runs it checks its run (a cancelled or finished run's step does nothing, a step that already finished
returns its stored result); after, it appends to the run's timeline and records itself, so a second delivery is
recognised, and ``transactional=True`` commits the body's own writes exactly once. A
:class:`~approvals.schemas.Decision` arrives as the parsed model, not a dict. Raise :class:`Stop` to end a run
with another status, or ``return self.replace(canvas)`` to go on with another canvas.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
import typing
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from celery import Signature, Task, signature
from celery.exceptions import Reject
from pydantic import ValidationError
from sqlalchemy.orm import Session

from approvals.errors import InvalidPayload, LostClaim, Replaced, Stop
from approvals.models import OutboxMessage
from approvals.schemas import DECISION_TAG, Decision
from approvals.status import StepStatus
from hitl.core.waiting import store_waits
from hitl.delivery import outbox, steplog
from hitl.delivery.canvas import HEADER_LAST, HEADER_RECEIPT, HEADER_RUN, HEADER_WAIT, WAIT_TASK, compile_canvas
from hitl.delivery.waitspec import parse_duration
from hitl.infra import blobs
from hitl.infra.celery_app import app
from hitl.infra.db import is_transient, session_scope, statement_scope
from hitl.infra.jsonsafe import jsonable

#: The keyword a step declares to receive its run's id.
RUN_ID_KWARG = "run_id"

log = logging.getLogger(__name__)

#: Seconds a worker process waits before handing back the message of a step whose database work failed
#: transiently (see :func:`_requeue_on_database_failure`): during an outage, one try per process per pause.
REQUEUE_PAUSE_SECONDS = 1.0


def _revive(value: Any, model: type[Decision[Any]] = Decision) -> Any:
    """A decision dict becomes a :class:`Decision` (``model``: a ``Decision[Form]`` the step declared, whose
    ``data`` is then parsed; data that does not fit it, e.g. a rejection's, stays a plain dict). The list of
    decisions a parallel wait resumes with is revived item by item (None stays None)."""
    if isinstance(value, list) and value and all(_is_decision(v) or v is None for v in value):
        return [v if v is None else _revive(v, model) for v in value]
    if isinstance(value, dict) and value.get("type") == DECISION_TAG:
        if model is not Decision:
            try:
                return model.model_validate(value)
            except ValidationError:
                pass
        return Decision.model_validate(value)
    return value


def _is_decision(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == DECISION_TAG


def _declared_decision(fn: Callable[..., Any]) -> type[Decision[Any]]:
    """The ``Decision[...]`` a step function declares for its decision parameter, or plain ``Decision``."""
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):
        return Decision
    for hint in hints.values():
        if isinstance(hint, type) and issubclass(hint, Decision):
            return hint
    return Decision


def _end_chain(request: Any) -> None:
    request.chain = None
    request.callbacks = None


@contextlib.contextmanager
def _requeue_on_database_failure(name: str, task_id: str) -> Iterator[None]:
    """Hand the step's message back to the broker when hitl's own database work for it fails transiently.

    A dropped connection, a database restart or a lock timeout says nothing about the step: failing its run
    for it would be wrong, and the message is not acknowledged yet (``task_acks_late``). After
    :data:`REQUEUE_PAUSE_SECONDS` this raises Celery's :class:`~celery.exceptions.Reject` with
    ``requeue=True`` (Celery's documented way to return an acks-late message), so the step is delivered again
    with the same task id and attempt number; whatever its transaction wrote was rolled back. Which errors
    are transient: :func:`hitl.infra.db.is_transient`. Used around the step's check, its completion transaction,
    and (for a ``transactional`` step) its body, whose writes are in that transaction — not around the body
    of another step, whose errors are the step's own (use ``autoretry_for`` there).
    """
    try:
        yield
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning(
            "step %s (%s): database unavailable (%s); its message goes back to the queue in %.1f s",
            name,
            task_id,
            exc,
            REQUEUE_PAUSE_SECONDS,
        )
        time.sleep(REQUEUE_PAUSE_SECONDS)
        raise Reject(f"database unavailable: {exc}", requeue=True) from exc


class Step(Task):  # type: ignore[misc]
    """Base class of journaled steps (see module docstring). Use :func:`step` rather than this directly.

    Task options it adds: ``transactional=True`` gives the function a ``session`` argument whose writes
    commit in one transaction with the step's completion record, so they happen exactly once however often
    the message is delivered. Without it a step's effects are at-least-once and should be idempotent.

    Each delivery costs one read before the body and one write transaction after it (its step record and
    timeline entry; the run's end, or the approvals of a wait that follows, in the same transaction). Celery
    sends the rest of the chain, as for any task; the next tasks have deterministic ids, so a second delivery of
    this step sends what a journaled step after it recognises. When hitl's database work fails transiently (a
    dropped connection, a restart, a lock timeout), the message goes back to the queue instead of failing the
    run (see :func:`_requeue_on_database_failure`). Sent outside a workflow (``.delay()``), a step is a plain task.
    """

    #: Celery checks call arguments against the function at send time; hitl checks them when a run starts
    #: (:func:`hitl.delivery.canvas.compile_canvas`), knowing what hitl passes (``run_id``, ``session``).
    typing = False
    transactional = False
    #: Marks hitl's journaled steps (a plain task has no such attribute).
    journaled = True
    _accepts_run_id: bool | None = None
    _decision_type: type[Decision[Any]] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        legacy_run_id = kwargs.pop(RUN_ID_KWARG, None)  # messages sent before the run id moved to a header
        run_id = None if request.called_directly else (request.get(HEADER_RUN) or legacy_run_id)
        if run_id is None:
            return self.run(*args, **kwargs)
        receipt = request.get(HEADER_RECEIPT) or (request.id if legacy_run_id else None)
        with _requeue_on_database_failure(self.name, request.id):
            c = steplog.check(run_id, self.name, request.id, attempt=(request.retries or 0) + 1, receipt=receipt)
            if c.next_task_id:  # a second delivery of a replaced step: its replacement is on its way
                outbox.republish_undelivered(c.next_task_id)
        if c.skip:
            _end_chain(request)
            return None
        if c.done is not None:  # a second delivery: reuse the result and send the rest again (same task ids)
            if c.done is not StepStatus.FINISHED:
                _end_chain(request)
                return c.result
            return self._send_rest(c.result)
        if self._wants_run_id():
            kwargs[RUN_ID_KWARG] = run_id
        try:
            model = self._decision_model()
            with steplog.running(receipt):
                result, rows = self._execute(c, [_revive(blobs.resolve(a), model) for a in args], kwargs)
        except LostClaim:  # another delivery finished this step first: go on with its result
            return self._after_lost_claim(run_id, receipt)
        outbox.publish(rows)
        return self._send_rest(result)

    def _after_lost_claim(self, run_id: str, receipt: str | None) -> Any:
        """Another delivery of this step finished first. Send the rest of the chain with its stored result: that
        delivery may have died before sending it, and its message may be gone with this one's acknowledgement
        (a message re-delivered after the visibility timeout shares its delivery tag with the first). A second
        copy of what follows is recognised by a journaled step, and plain tasks are at-least-once anyway."""
        request = self.request
        with _requeue_on_database_failure(self.name, request.id):
            again = steplog.check(run_id, self.name, request.id, receipt=receipt)
        if again.done is StepStatus.FINISHED:
            return self._send_rest(again.result)
        _end_chain(request)
        return again.result

    def _send_rest(self, result: Any) -> Any:
        """Send the rest of the chain with ``result`` now, as Celery's tracer would after the step returns, but
        where a broker failure can still hand the message back (``Reject(requeue=True)``): the redelivery finds
        the step finished and sends the rest again. (Sent by the tracer, a failed publish would fail the step
        after its completion was committed, and the rest of the run would be lost.) Returns ``result``."""
        request = self.request
        rest = list(request.chain or [])
        if not rest:
            return result
        _end_chain(request)
        try:
            signature(rest[-1], app=self.app).apply_async(
                (result,), chain=rest[:-1] or None, parent_id=request.id, root_id=request.root_id or request.id
            )
        except outbox.PUBLISH_ERRORS as exc:
            request.chain = rest
            log.warning(
                "step %s (%s): could not send the rest of its chain (%s); its message goes back to the queue",
                self.name,
                request.id,
                exc,
            )
            time.sleep(REQUEUE_PAUSE_SECONDS)
            raise Reject(f"broker unavailable: {exc}", requeue=True) from exc
        return result

    def wait_header(self, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The compiled wait that follows this step (:data:`hitl.delivery.canvas.HEADER_WAIT`), if any."""
        value = self.request.get(HEADER_WAIT)
        return value if isinstance(value, dict) else None

    def _execute(self, c: steplog.Claim, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, list[OutboxMessage]]:
        header = self.wait_header(kwargs)
        try:
            if self.transactional:
                with _requeue_on_database_failure(c.name, c.task_id), session_scope() as s:
                    return self._finish(s, c, self._run_body(args, {**kwargs, "session": s}), header)
            outcome = self._run_body(args, kwargs)
            alone = header is None and outcome[1] is None  # its completion is one statement on PostgreSQL
            with _requeue_on_database_failure(c.name, c.task_id), statement_scope() if alone else session_scope() as s:
                return self._finish(s, c, outcome, header)
        except Stop as stop:  # (a transactional step's own writes were rolled back)
            result = jsonable(stop.result)
            with _requeue_on_database_failure(c.name, c.task_id):
                steplog.stop(c, stop.status, result, stop.reason)
            _end_chain(self.request)
            return result, []

    def _run_body(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        try:
            return jsonable(self.run(*args, **kwargs)), None
        except Replaced as replaced:
            return None, replaced.canvas

    def _finish(
        self,
        s: Session,
        c: steplog.Claim,
        outcome: tuple[Any, dict[str, Any] | None],
        header: dict[str, Any] | None,
    ) -> tuple[Any, list[OutboxMessage]]:
        result, replacement = outcome
        request = self.request
        if replacement is not None:
            _end_chain(request)
            send: tuple[list[dict[str, Any]], list[Any], str] = ([replacement], [], f"{c.task_id}.replace")
            return None, [row] if (row := steplog.finish(s, c, StepStatus.REPLACED, None, send=send)) else []
        if header is not None:
            own = self.name == WAIT_TASK  # the wait's own task: no step_finished entry of its own
            steplog.finish(s, c, StepStatus.WAITING if own else StepStatus.FINISHED, result, waiting=True)
            _end_chain(request)
            return result, store_waits(s, c.run_id, c.task_id, result, header)
        steplog.finish(s, c, StepStatus.FINISHED, result, end_of_chain=bool(request.get(HEADER_LAST)))
        return result, []

    def _decision_model(self) -> type[Decision[Any]]:
        found = self._decision_type
        if found is None:
            found = type(self)._decision_type = _declared_decision(self.run)
        return found

    def _wants_run_id(self) -> bool:
        if self._accepts_run_id is None:
            params = inspect.signature(self.run).parameters
            type(self)._accepts_run_id = RUN_ID_KWARG in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        return bool(self._accepts_run_id)

    def replace(self, sig: Signature) -> Any:
        """End this step and go on with ``sig`` (any canvas a workflow may hold, waits included), then with what
        would have followed this step.

        Like Celery's ``Task.replace`` (use it as ``return self.replace(...)``), but the replacement goes
        through the outbox in this step's completion transaction. Its tasks get ids derived from this step's
        id, so a second delivery of this step recognises them.

        Raises:
            WorkflowError: ``sig`` has a shape hitl cannot run.
        """
        request = self.request
        run_id = request.get(HEADER_RUN)
        if run_id is None:
            return super().replace(sig)
        tail: tuple[str, Any]
        header = self.wait_header(request.kwargs or {})
        if header is not None:
            tail = ("wait", header)
        elif request.chain:
            tail = ("chain", [dict(x) for x in reversed(request.chain)])
        else:
            tail = ("end", None)
        compiled = compile_canvas(sig, run_id, base=f"{request.id}/replace", tail=tail)
        if compiled is None:
            raise InvalidPayload("replace() needs a canvas with at least one task")
        raise Replaced(compiled)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        run_id = self.request.get(HEADER_RUN) or (kwargs or {}).get(RUN_ID_KWARG)
        if run_id is not None:
            attempt = (self.request.retries or 0) + 1
            receipt = self.request.get(HEADER_RECEIPT)
            steplog.fail(run_id, self.name, task_id, f"{type(exc).__name__}: {exc}", attempt, receipt)


P = ParamSpec("P")
R = TypeVar("R", covariant=True)


class StepTask(Protocol[P, R]):
    """What ``@hitl.step`` returns, as the type checker sees it: a Celery task (a :class:`Step`) that keeps the
    decorated function's parameters and return type for direct calls; ``s``/``si``/``delay``/``apply_async`` are
    Celery's (their arguments are checked when a run starts, :func:`hitl.delivery.canvas.compile_canvas`)."""

    name: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def s(self, *args: Any, **kwargs: Any) -> Signature: ...

    def si(self, *args: Any, **kwargs: Any) -> Signature: ...

    def delay(self, *args: Any, **kwargs: Any) -> Any: ...

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any: ...


@overload
def step(fn: Callable[P, R], /) -> StepTask[P, R]: ...


@overload
def step(
    *, name: str | None = None, bind: bool = False, transactional: bool = False, **options: Any
) -> Callable[[Callable[P, R]], StepTask[P, R]]: ...


def step(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a journaled step: ``@hitl.step`` or ``@hitl.step(name=..., max_retries=...)``.

    Takes Celery's task options (``name``, ``bind``, ``autoretry_for``, ``retry_backoff``, ...) and
    ``transactional=True`` (see :class:`Step`). The task gets ``base=Step``. A function that declares a
    ``run_id`` parameter receives its run's id. Any other Celery task may stand in a workflow too, without a
    journal (see the docs, "Reliability and guarantees").

    Returns:
        The task (a :class:`Step`), typed as :class:`StepTask` with the function's own parameters and return type
        (``ParamSpec``, as dramatiq's ``actor`` keeps them).
    """
    options.setdefault("base", Step)
    if fn is not None:
        return app.task(**options)(fn)

    def decorate(inner: Callable[..., Any]) -> Any:
        return app.task(**options)(inner)

    return decorate


__all__ = ["Step", "StepTask", "Stop", "parse_duration", "step"]
