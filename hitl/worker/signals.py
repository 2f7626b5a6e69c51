"""What a run's plain Celery tasks cost hitl: nothing, until the run's state changes.

A workflow may hold any Celery task. hitl reads its run from the message headers (:mod:`hitl.delivery.canvas`) and acts
on Celery's task signals, in the worker process that ran the task:

- ``task_success`` of the task before a wait (:data:`~hitl.delivery.canvas.HEADER_WAIT`): store the approval(s) and move
  the run to ``waiting``, in one write transaction (the wait costs no broker hop);
- ``task_success`` of the run's last task (:data:`~hitl.delivery.canvas.HEADER_LAST`): the run succeeds with its result;
- ``task_failure`` (raised after its retries), ``task_unknown`` (no task of that name on the worker),
  ``task_rejected`` and ``task_internal_error`` (a message that cannot be decoded or dispatched): the run fails
  with the reason;
- a first task of a message hitl sent from its outbox (:data:`~hitl.delivery.canvas.HEADER_RECEIPT`) has the outbox row
  marked delivered, batched per process (one write per :data:`RECEIPT_FLUSH_SECONDS`, off the task's path).

Every other task of a run does no database work. Celery swallows what a signal handler raises, so when the
write fails (the database is unreachable) the handler sends the same work as a task of hitl's own
(``hitl.wait_for_approval`` or ``hitl.finish_run``), a journaled step that waits for the database instead of
failing; if the broker is unreachable too, the task's own acknowledgement fails with it and Celery delivers the
task again. Journaled steps (:class:`~hitl.worker.steps.Step`) do all of this in their own transaction and are skipped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import signals, signature

from approvals.errors import DomainError, HitlError, Stop
from approvals.status import EventKind, RunStatus
from approvals.transitions import CHUNK, add_event, end_run
from hitl.core.waiting import one_statement, store_waits
from hitl.delivery import outbox
from hitl.delivery.canvas import FINISH_TASK, HEADER_LAST, HEADER_RECEIPT, HEADER_RUN, HEADER_WAIT, WAIT_TASK
from hitl.infra.celery_app import app
from hitl.infra.db import session_scope, statement_scope
from hitl.infra.jsonsafe import jsonable
from hitl.worker.steps import Step

log = logging.getLogger(__name__)

#: Seconds between the writes that mark outbox rows delivered (each worker process batches its receipts).
RECEIPT_FLUSH_SECONDS = 0.5


def _run_of(task: Any) -> str | None:
    """The run of a plain task's message; None for a journaled step (it records itself), a task called directly,
    and Celery's own tasks (``celery.chord_unlock`` carries its chord body's headers)."""
    request = task.request
    if isinstance(task, Step) or request.called_directly or str(task.name).startswith("celery."):
        return None
    run_id = request.get(HEADER_RUN)
    return str(run_id) if run_id is not None else None


@signals.task_success.connect
def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    run_id = _run_of(sender)
    if run_id is None:
        return
    request = sender.request
    receipt = request.get(HEADER_RECEIPT)
    wait, last = request.get(HEADER_WAIT), request.get(HEADER_LAST)
    if wait is None and not last:
        if receipt:
            _note_receipt(receipt)
        return
    try:
        value = jsonable(result)
    except Exception as exc:  # (jsonable raises TypeError or ValueError on what JSON cannot hold)
        _fail(run_id, sender.name, request.id, f"{sender.name} returned what JSON cannot hold: {exc}", receipt)
        return
    if wait is not None:
        _reach_wait(run_id, sender.name, request.id, value, wait, receipt)
    else:
        _succeed(run_id, sender.name, request.id, value, receipt)


def _reach_wait(run_id: str, name: str, task_id: str, subject: Any, wait: dict[str, Any], receipt: str | None) -> None:
    try:
        with statement_scope() if not receipt and one_statement(wait) else session_scope() as s:
            if receipt:
                outbox.mark_delivered(s, receipt)
            rows = store_waits(s, run_id, task_id, subject, wait)
    except Stop as stop:
        _end(run_id, stop.status, stop.reason, receipt)
        return
    except DomainError as exc:  # the subject is too large, or the approval created ahead belongs to another run
        _fail(run_id, name, task_id, exc.message, receipt)
        return
    except HitlError as exc:  # the database failed: the wait's own task stores it when the database is back
        log.warning("run %s: could not store its wait after %s (%s); sending it as a task", run_id, name, exc)
        _send_own(WAIT_TASK, run_id, f"{task_id}/wait", [subject], {"hitl_wait": wait}, {})
        return
    outbox.publish(rows)


def _succeed(run_id: str, name: str, task_id: str, result: Any, receipt: str | None) -> None:
    try:
        with session_scope() if receipt else statement_scope() as s:  # (end_run is one statement on PostgreSQL)
            if receipt:
                outbox.mark_delivered(s, receipt)
            end_run(s, run_id, RunStatus.SUCCEEDED, result=result)
    except HitlError as exc:
        log.warning("run %s: could not record its end after %s (%s); sending it as a task", run_id, name, exc)
        _send_own(FINISH_TASK, run_id, f"{task_id}/finish", [result], {}, {HEADER_LAST: True})


def _fail(run_id: str, name: str, task_id: str, error: str, receipt: str | None = None) -> None:
    try:
        with session_scope() as s:
            if receipt:
                outbox.mark_delivered(s, receipt)
            add_event(s, run_id, EventKind.STEP_FAILED, name, task_id=task_id, detail={"error": error})
            end_run(s, run_id, RunStatus.FAILED, {"error": error}, error=error)
    except HitlError as exc:
        log.warning("run %s: could not record that %s failed (%s); sending it as a task", run_id, name, exc)
        _send_own(FINISH_TASK, run_id, f"{task_id}/fail", [None], {"error": error, "failed_task": name}, {})


def _end(run_id: str, status: RunStatus, reason: str | None, receipt: str | None) -> None:
    with session_scope() as s:
        if receipt:
            outbox.mark_delivered(s, receipt)
        end_run(s, run_id, status, {"reason": reason} if reason else None, error=reason)


def _send_own(
    name: str, run_id: str, task_id: str, args: list[Any], kwargs: dict[str, Any], headers: dict[str, Any]
) -> None:
    try:
        signature(name, args=args, kwargs=kwargs, app=app).apply_async(
            task_id=task_id, root_id=run_id, headers={HEADER_RUN: run_id, **headers}
        )
    except Exception:
        log.exception("run %s: could not send %s either; the task's message is delivered again", run_id, name)
        raise


@signals.task_failure.connect
def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    run_id = _run_of(sender)
    if run_id is None:
        return
    _fail(
        run_id,
        sender.name,
        task_id or sender.request.id,
        f"{type(exception).__name__}: {exception}",
        sender.request.get(HEADER_RECEIPT),
    )


@signals.task_internal_error.connect
def _on_internal_error(
    sender: Any = None,
    task_id: str | None = None,
    request: Any = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    run_id = (request or {}).get(HEADER_RUN) if hasattr(request, "get") else None
    if run_id is None or isinstance(sender, Step):
        return
    name = getattr(sender, "name", "?")
    _fail(
        run_id,
        name,
        task_id or "?",
        f"{name} could not be run or its chain sent: {type(exception).__name__}: {exception}",
    )


@signals.task_unknown.connect
def _on_unknown(name: str | None = None, id: str | None = None, message: Any = None, **_: Any) -> None:
    run_id = (getattr(message, "headers", None) or {}).get(HEADER_RUN)
    if run_id is None:
        return
    _fail(run_id, str(name), str(id), f"no task named {name!r} is registered on the worker that received it")


@signals.task_rejected.connect
def _on_rejected(message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    run_id = headers.get(HEADER_RUN)
    if run_id is None:
        return
    name = str(headers.get("task", "?"))
    _fail(run_id, name, str(headers.get("id", "?")), f"the message of {name} was rejected: {exc}")


# Receipts: outbox rows whose first task ran, marked delivered in batches by one thread per process.
_receipts: list[str] = []
_receipts_lock = threading.Lock()
_flusher_pid = 0


def _note_receipt(task_id: str) -> None:
    global _flusher_pid
    with _receipts_lock:
        _receipts.append(task_id)
        if _flusher_pid != os.getpid():
            _flusher_pid = os.getpid()
            threading.Thread(target=_flush_receipts_forever, name="hitl-receipts", daemon=True).start()


def flush_receipts() -> int:
    """Mark the outbox rows noted by this process delivered, one statement per :data:`CHUNK` rows; return how
    many were written.

    A failure keeps them for the next pass (until then, the relay may re-send such a message: the first task
    runs again, which a plain task's at-least-once delivery allows and a journaled step recognises).
    """
    with _receipts_lock:
        batch = list(_receipts)
        _receipts.clear()
    if not batch:
        return 0
    try:
        with statement_scope() as s:  # each statement commits by itself: marking a row twice is harmless
            for i in range(0, len(batch), CHUNK):
                outbox.mark_delivered(s, *batch[i : i + CHUNK])
    except HitlError as exc:
        log.warning("could not mark %d outbox message(s) delivered: %s", len(batch), exc)
        with _receipts_lock:
            _receipts.extend(batch)
        return 0
    return len(batch)


def _flush_receipts_forever() -> None:
    while True:
        time.sleep(RECEIPT_FLUSH_SECONDS)
        flush_receipts()
