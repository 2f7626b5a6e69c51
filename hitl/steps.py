"""Steps: Celery tasks that know their run. The wait step is one of them.

A step is an ordinary Celery task whose base class is :class:`Step`. Before its body runs it checks its run
(a cancelled or finished run's step does nothing); after, it appends to the run's timeline and, when it was
the last task of the chain, marks the run succeeded. A :class:`~approvals.schemas.Decision` arrives as the
parsed model, not a dict. Raise :class:`Stop` to end a run with another status.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import Signature, Task, chain
from celery.exceptions import Ignore
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.orm import Session

from approvals.errors import InvalidPayload
from approvals.schemas import DECISION_TAG, Decision
from approvals.status import RunStatus, StepStatus
from hitl import steplog
from hitl.app import app
from hitl.canvas import RUN_ID_KWARG, bind_run, with_task_ids
from hitl.db import session_scope
from hitl.jsonsafe import jsonable


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


def _revive(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") == DECISION_TAG:
        return Decision.model_validate(value)
    return value


def _end_chain(request: Any) -> None:
    request.chain = None
    request.callbacks = None


class Step(Task):  # type: ignore[misc]
    """Base class of hitl steps (see module docstring). Use :func:`step` rather than this directly.

    Task options it adds: ``transactional=True`` gives the function a ``session`` argument whose writes
    commit in one transaction with the step's completion record, so they happen exactly once however often
    the message is delivered. Without it a step's effects are at-least-once and should be idempotent.
    """

    #: Celery checks call arguments against the function at send time; a step also takes ``run_id``,
    #: which :meth:`__call__` removes unless the function declares it, so that check is off.
    typing = False
    transactional = False
    _accepts_run_id: bool | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run_id = kwargs.pop(RUN_ID_KWARG, None)
        if run_id is None or self.request.called_directly:
            return self.run(*args, **kwargs)
        request = self.request
        c = steplog.claim(run_id, self.name, request.id)
        if c.skip:
            _end_chain(request)
            return None
        if c.done is not None:  # a second delivery of a step that already ran: reuse its result
            if c.done is not StepStatus.FINISHED:
                _end_chain(request)
            return c.result
        if self._wants_run_id():
            kwargs[RUN_ID_KWARG] = run_id
        try:
            return self._execute(c, [_revive(a) for a in args], kwargs)
        except steplog.LostClaim:  # a later attempt owns this step now and carries the chain on
            _end_chain(request)
            return None

    def _execute(self, c: steplog.Claim, args: list[Any], kwargs: dict[str, Any]) -> Any:
        request = self.request
        try:
            if self.transactional:
                with session_scope() as s:
                    result = jsonable(self.run(*args, session=s, **kwargs))
                    self._finish(s, c, result)
            else:
                result = jsonable(self.run(*args, **kwargs))
                with session_scope() as s:
                    self._finish(s, c, result)
        except Stop as stop:
            _end_chain(request)
            result = jsonable(stop.result)
            steplog.stop(c, stop.status, result, stop.reason)
            return result
        except Ignore:  # replaced by another canvas (Task.replace): the replacement carries the run on
            with contextlib.suppress(steplog.LostClaim), session_scope() as s:
                steplog.finish(s, c, StepStatus.REPLACED, None)
            raise
        return result

    def _finish(self, s: Session, c: steplog.Claim, result: Any) -> None:
        request = self.request
        if request.get("hitl_waiting"):
            steplog.finish(s, c, StepStatus.WAITING, result)
        else:
            end = not request.chain and not request.callbacks
            steplog.finish(s, c, StepStatus.FINISHED, result, end_of_chain=end)

    def _wants_run_id(self) -> bool:
        if self._accepts_run_id is None:
            params = inspect.signature(self.run).parameters
            type(self)._accepts_run_id = RUN_ID_KWARG in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        return bool(self._accepts_run_id)

    def replace(self, sig: Signature) -> Any:
        """Replace this step with ``sig`` (Celery's ``Task.replace``), bound to this step's run.

        The replacement's tasks get ids derived from this step's id, so a second delivery of this step
        sends the same replacement and its steps recognise themselves.
        """
        run_id = (self.request.kwargs or {}).get(RUN_ID_KWARG)
        if run_id is not None:
            sig = chain(*with_task_ids(bind_run(sig, run_id), f"{self.request.id}/replace"))
        return super().replace(sig)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        run_id = (kwargs or {}).get(RUN_ID_KWARG)
        if run_id is None:
            return
        if isinstance(exc, KombuOperationalError) and steplog.hand_chain_to_outbox(run_id, task_id, self.request.chain):
            return  # the step ran; only sending the next one failed (broker down): the outbox relay sends it
        steplog.fail(run_id, self.name, task_id, f"{type(exc).__name__}: {exc}")


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
