"""Steps: Celery tasks that know their run. The wait step is one of them.

A step is an ordinary Celery task whose base class is :class:`Step`. Before its body runs it checks its run
(a cancelled or finished run's step does nothing); after, it appends to the run's timeline and, when it was
the last task of the chain, marks the run succeeded. A :class:`~approvals.schemas.Decision` arrives as the
parsed model, not a dict. Raise :class:`Stop` to end a run with another status.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import time
import typing
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from celery import Signature, Task
from celery.exceptions import Reject
from pydantic import ValidationError
from sqlalchemy.orm import Session

from approvals.errors import InvalidPayload
from approvals.models import OutboxMessage
from approvals.schemas import DECISION_TAG, Decision
from approvals.status import RunStatus, StepStatus
from hitl import blobs, outbox, steplog
from hitl.app import app
from hitl.canvas import RUN_ID_KWARG, bind_run, with_task_ids
from hitl.db import is_transient, session_scope
from hitl.jsonsafe import jsonable

log = logging.getLogger(__name__)

#: Seconds a worker process waits before handing back the message of a step whose database work failed
#: transiently (see :func:`_requeue_on_database_failure`): during an outage, one try per process per pause.
REQUEUE_PAUSE_SECONDS = 1.0


class Stop(Exception):
    """Raised inside a step to end its run now with ``status`` (e.g. rejected) and ``result``.

    The rest of the chain is not run. ``reason`` is recorded as the run's error text.
    """

    def __init__(self, status: RunStatus | str, result: Any = None, reason: str | None = None) -> None:
        self.status = RunStatus(status)
        if not self.status.terminal:
            raise ValueError(f"Stop needs a terminal status, not {self.status.value}")
        self.result = result
        self.reason = reason
        super().__init__(f"run stopped as {self.status.value}")


def _revive(value: Any, model: type[Decision[Any]] = Decision) -> Any:
    """A decision dict becomes a :class:`Decision` (``model``: a ``Decision[Form]`` the step declared, whose
    ``data`` is then parsed; data that does not fit it, e.g. a rejection's, stays a plain dict)."""
    if isinstance(value, dict) and value.get("type") == DECISION_TAG:
        if model is not Decision:
            try:
                return model.model_validate(value)
            except ValidationError:
                pass
        return Decision.model_validate(value)
    return value


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
    are transient: :func:`hitl.db.is_transient`. Used around the step's check, its completion transaction,
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


class _Replaced(Exception):
    """Raised by :meth:`Step.replace`: the step is done and ``sigs`` are sent in its place."""

    def __init__(self, sigs: list[dict[str, Any]]) -> None:
        super().__init__("replaced")
        self.sigs = sigs


class Step(Task):  # type: ignore[misc]
    """Base class of hitl steps (see module docstring). Use :func:`step` rather than this directly.

    Task options it adds: ``transactional=True`` gives the function a ``session`` argument whose writes
    commit in one transaction with the step's completion record, so they happen exactly once however often
    the message is delivered. Without it a step's effects are at-least-once and should be idempotent.

    A step sends the rest of its chain itself, through the outbox (:mod:`hitl.steplog`); Celery's own
    chain dispatch is switched off for it. Each delivery costs one read before the body and one write
    transaction after it (see :mod:`hitl.steplog`). When that database work fails transiently (a dropped
    connection, a restart, a lock timeout), the message goes back to the queue instead of failing the run
    (see :func:`_requeue_on_database_failure`).
    """

    #: Celery checks call arguments against the function at send time; a step also takes ``run_id``,
    #: which :meth:`__call__` removes unless the function declares it, so that check is off.
    typing = False
    transactional = False
    _accepts_run_id: bool | None = None
    _decision_type: type[Decision[Any]] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run_id = kwargs.pop(RUN_ID_KWARG, None)
        if run_id is None or self.request.called_directly:
            return self.run(*args, **kwargs)
        request = self.request
        rest = [dict(sig) for sig in reversed(request.chain or [])]
        request.hitl_rest = rest
        with _requeue_on_database_failure(self.name, request.id):
            c = steplog.check(run_id, self.name, request.id, attempt=(request.retries or 0) + 1)
            if c.next_task_id:  # a second delivery of a step that already ran: what it sent is on its way
                outbox.republish_undelivered(c.next_task_id)
        if c.skip or c.done is not None:  # (a finished step's result is reused)
            _end_chain(request)
            return c.result
        if self._wants_run_id():
            kwargs[RUN_ID_KWARG] = run_id
        try:
            model = self._decision_model()
            with steplog.running(request.id):
                result, row = self._execute(c, [_revive(blobs.resolve(a), model) for a in args], kwargs, rest)
        except steplog.LostClaim:  # another delivery finished this step first and sent what follows
            _end_chain(request)
            return None
        # The step completed: hitl sends what follows itself, through the outbox, not Celery. (On an
        # exception the chain stays on the request, so that Celery's retry re-sends the step with it.)
        _end_chain(request)
        if row is not None:
            outbox.publish([row])
        return result

    def _execute(
        self, c: steplog.Claim, args: list[Any], kwargs: dict[str, Any], rest: list[dict[str, Any]]
    ) -> tuple[Any, OutboxMessage | None]:
        try:
            if self.transactional:
                with _requeue_on_database_failure(c.name, c.task_id), session_scope() as s:
                    return self._run_and_finish(s, c, args, {**kwargs, "session": s}, rest)
            outcome = self._run_body(args, kwargs)
            with _requeue_on_database_failure(c.name, c.task_id), session_scope() as s:
                return self._finish(s, c, outcome, rest)
        except Stop as stop:  # (a transactional step's own writes were rolled back)
            result = jsonable(stop.result)
            with _requeue_on_database_failure(c.name, c.task_id):
                steplog.stop(c, stop.status, result, stop.reason)
            return result, None

    def _run_and_finish(
        self, s: Session, c: steplog.Claim, args: list[Any], kwargs: dict[str, Any], rest: list[dict[str, Any]]
    ) -> tuple[Any, OutboxMessage | None]:
        return self._finish(s, c, self._run_body(args, kwargs), rest)

    def _run_body(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, list[dict[str, Any]] | None]:
        try:
            return jsonable(self.run(*args, **kwargs)), None
        except _Replaced as replaced:
            return None, replaced.sigs

    def _finish(
        self,
        s: Session,
        c: steplog.Claim,
        outcome: tuple[Any, list[dict[str, Any]] | None],
        rest: list[dict[str, Any]],
    ) -> tuple[Any, OutboxMessage | None]:
        result, replacement = outcome
        if replacement is not None:
            return None, steplog.finish(s, c, StepStatus.REPLACED, None, send=(replacement, []))
        if self.request.get("hitl_waiting"):
            return result, steplog.finish(s, c, StepStatus.WAITING, result)
        if self.request.get("hitl_send"):  # the step chose what follows (a wait that found its decision ready)
            return result, steplog.finish(s, c, StepStatus.FINISHED, result, send=self.request.hitl_send)
        if rest:
            return result, steplog.finish(s, c, StepStatus.FINISHED, result, send=(rest, [result]))
        return result, steplog.finish(s, c, StepStatus.FINISHED, result, end_of_chain=True)

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
        """End this step and go on with ``sig`` (a task or a linear chain) instead, then the rest of the chain.

        Like Celery's ``Task.replace`` (use it as ``return self.replace(...)``), but the replacement goes
        through the outbox in this step's completion transaction. Its tasks get ids derived from this step's
        id, so a second delivery of this step recognises them.
        """
        run_id = (self.request.kwargs or {}).get(RUN_ID_KWARG)
        if run_id is None:
            return super().replace(sig)
        replacement = with_task_ids(bind_run(sig, run_id), f"{self.request.id}/replace")
        raise _Replaced(replacement + list(self.request.get("hitl_rest") or []))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        run_id = (kwargs or {}).get(RUN_ID_KWARG)
        if run_id is not None:
            attempt = (self.request.retries or 0) + 1
            steplog.fail(run_id, self.name, task_id, f"{type(exc).__name__}: {exc}", attempt)


def step(*args: Any, **options: Any) -> Any:
    """Declare a step: ``@hitl.step`` or ``@hitl.step(name=..., max_retries=...)``.

    Takes Celery's task options (``name``, ``bind``, ``autoretry_for``, ``retry_backoff``, ...) and
    ``transactional=True`` (see :class:`Step`). The task gets ``base=Step``. A function that declares a
    ``run_id`` parameter receives its run's id.
    """
    options.setdefault("base", Step)
    if args and callable(args[0]) and len(args) == 1 and not options.keys() - {"base"}:
        return app.task(**options)(args[0])

    def decorate(fn: Callable[..., Any]) -> Any:
        return app.task(*args, **options)(fn)

    return decorate


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: str | float | int | timedelta) -> timedelta:
    """Parse a duration: a number of seconds, a ``timedelta``, or ``"90s"``, ``"15m"``, ``"1h"``, ``"2d"``, ``"1w"``.

    Raises:
        InvalidPayload: the value is not a positive duration in one of these forms.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise InvalidPayload(f"not a duration: {value!r} (use seconds or 30s, 15m, 1h, 2d, 1w)")
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds <= 0:
        raise InvalidPayload(f"a duration must be positive, not {value!r}")
    return timedelta(seconds=seconds)
