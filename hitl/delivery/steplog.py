"""The step record: what makes a journaled step's effects happen once although Celery may deliver it twice.

Every task of a run has a deterministic task id (see :func:`hitl.delivery.canvas.child_task_id`), so a redelivery, a
retry, or the same chain sent again after a redelivery of the step before carries the same id. Before the body
runs, :func:`check` reads the run and the step record (a read: no write lock, no transaction to commit): a step
of a finished or cancelled run is skipped, and a step that already finished returns its stored result without
running the body. After the body, :func:`finish` inserts the record (``INSERT ... ON CONFLICT``, never over a
finished one) in one transaction with the timeline entry, the run's status (its end, or the approvals of a wait
that follows) and — for ``transactional=True`` steps — the step's own database writes. Of two deliveries that
run at the same time, the first to finish wins; the other's transaction rolls back (:class:`LostClaim`), so a
transactional step's writes commit once. A non-transactional body may run twice (it is at-least-once and should
be idempotent), as with any acks-late Celery task.

One write transaction per step is the design. Two consequences are handled here: a run moves from ``pending``
to ``running`` when its first journaled step finishes, in that step's transaction, and a step whose message
came from the outbox and still runs after :func:`watch_interval` seconds has that message marked delivered by
a background thread, so the outbox relay never sends it again while it runs (:mod:`hitl.delivery.outbox`).

Celery sends the rest of the chain after the step returns, as for any task: a crash between the step's commit
and that send is a redelivery of the step, which finds its record, returns the stored result and lets Celery
send the rest again, with the same task ids. A replacement canvas (:meth:`hitl.Step.replace`) goes through the
outbox, in the completion transaction.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, literal, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approvals import tables
from approvals.errors import LostClaim
from approvals.models import OutboxMessage, note_new_events, utcnow
from approvals.status import EventKind, RunStatus, StepStatus, run_sources
from approvals.transitions import add_event, end_run, move_run, note_locked_run, on_postgresql
from hitl.delivery import outbox
from hitl.infra.db import read_scope, session_scope
from hitl.infra.settings import get_settings

log = logging.getLogger(__name__)

# Tables for the Core statements of the per-step hot path (no ORM unit-of-work bookkeeping), and the
# statements themselves, built once: SQLAlchemy then reuses their cache keys too.
_STEPS = tables.steps
_RUNS = tables.runs
_CHECK = (
    select(_RUNS.c.status, _STEPS.c.status, _STEPS.c.result, _STEPS.c.next_task_id, _STEPS.c.attempt)
    .select_from(_RUNS.outerjoin(_STEPS, _STEPS.c.task_id == bindparam("task_id")))
    .where(_RUNS.c.id == bindparam("run_id"))
)


#: The columns a step record left ``started`` (by the earlier claim-first protocol) has overwritten.
_RECORD_OVERWRITES = ("status", "attempt", "result", "next_task_id", "started_at", "finished_at")


def _insert_or_finish_started(dialect: Any) -> Any:
    """``INSERT`` a step record, or overwrite one left ``started`` (by the earlier claim-first protocol);
    ``RETURNING`` says whether it was written (psycopg's row count for ``ON CONFLICT`` is not reliable).
    PostgreSQL makes a concurrent insert of the same id wait for the first to commit or roll back."""
    stmt = dialect.insert(_STEPS)
    return stmt.on_conflict_do_update(
        index_elements=[_STEPS.c.task_id],
        set_={name: stmt.excluded[name] for name in _RECORD_OVERWRITES},
        where=_STEPS.c.status == StepStatus.STARTED,
    ).returning(_STEPS.c.task_id)


_INSERT_RECORD = {"sqlite": _insert_or_finish_started(sqlite), "postgresql": _insert_or_finish_started(postgresql)}


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`check` for one delivery of a step."""

    run_id: str
    task_id: str
    name: str
    #: 1 + the number of Celery retries before this delivery (a redelivery after a crash keeps its number).
    attempt: int
    started_at: datetime
    #: The run is missing, cancelled or finished: do nothing and end the chain.
    skip: bool = False
    #: The step already finished (or stored its approval): do not run the body; reuse ``result``.
    done: StepStatus | None = None
    result: Any = None
    #: For a finished step: the task id of the message its completion put in the outbox.
    next_task_id: str | None = None
    #: The run was pending when this delivery checked it (its first step): :func:`finish` moves it on.
    first: bool = False
    #: The outbox row whose message this delivery is (:data:`hitl.delivery.canvas.HEADER_RECEIPT`), marked delivered.
    receipt: str | None = None


def check(run_id: str, name: str, task_id: str, attempt: int = 1, receipt: str | None = None) -> Claim:
    """Say whether the body of step ``task_id`` of run ``run_id`` should run (one read, see module docstring).

    Writes only when the step is skipped (its run ended: the skip goes to the timeline and its message is
    marked delivered). A pending run is not marked running here but when its first step finishes
    (:func:`finish`), in that step's transaction.

    Args:
        run_id: the run the step belongs to.
        name: the task name, for the timeline.
        task_id: the step's deterministic task id.
        attempt: 1 + the Celery retries of this delivery.
        receipt: the outbox row this message came from, if any (marked delivered with the step).

    Raises:
        InfrastructureError: the database failed.
    """
    now = utcnow()
    with read_scope(one_statement=True) as conn:
        row = conn.execute(_CHECK, {"run_id": run_id, "task_id": task_id}).one_or_none()
    run_status, step_status, result, next_task_id, done_attempt = row if row is not None else (None,) * 5
    if run_status is None or run_status.terminal:
        _skip(run_id, name, task_id, run_status, receipt)
        return Claim(run_id, task_id, name, attempt, now, skip=True, receipt=receipt)
    if step_status is not None and step_status.terminal:
        return Claim(
            run_id,
            task_id,
            name,
            done_attempt or attempt,
            now,
            done=step_status,
            result=result,
            next_task_id=next_task_id,
            receipt=receipt,
        )
    return Claim(run_id, task_id, name, attempt, now, first=run_status is RunStatus.PENDING, receipt=receipt)


def _skip(run_id: str, name: str, task_id: str, status: RunStatus | None, receipt: str | None) -> None:
    if status is None:
        log.warning("step %s (%s): run %s does not exist; skipped", name, task_id, run_id)
        return
    with session_scope() as s:
        if receipt:
            outbox.mark_delivered(s, receipt)
        add_event(s, run_id, EventKind.STEP_SKIPPED, name, task_id=task_id, detail={"run_status": status.value})


def _insert_record(s: Session, values: dict[str, Any]) -> bool:
    """Write a step record; False (nothing written) if a finished record of that task id exists."""
    stmt = _INSERT_RECORD.get(s.get_bind().dialect.name)
    if stmt is None:
        try:
            with s.begin_nested():
                s.execute(insert(_STEPS), values)
        except IntegrityError:
            return False
        return True
    return s.execute(stmt, values).first() is not None


def finish(
    s: Session,
    c: Claim,
    status: StepStatus,
    result: Any,
    *,
    send: tuple[list[dict[str, Any]], list[Any], str] | None = None,
    end_of_chain: bool = False,
    waiting: bool = False,
) -> OutboxMessage | None:
    """In the caller's transaction: record the step as done (first finisher wins), mark its message
    delivered, append to the timeline, and end the run or write what the step sends next to the outbox.

    Args:
        s: the transaction (for a transactional step, the one its own writes are in).
        c: this delivery's claim.
        status: FINISHED, WAITING, REPLACED or STOPPED.
        result: the step's return value (JSON-safe), stored for a second delivery to reuse.
        send: ``(compiled canvases, args, outbox task id)`` of a message to send after commit (a replacement),
            or None: Celery sends the rest of the chain itself.
        end_of_chain: the step is the run's last task: the run succeeds with ``result``.
        waiting: a wait follows (the caller stores it in this transaction): the run is not moved to running.

    Returns:
        The outbox row to publish after commit, if any.

    Raises:
        LostClaim: another delivery of the step finished first; the caller's transaction must roll back.
    """
    next_id = send[2] if send else None
    values = {
        "task_id": c.task_id,
        "run_id": c.run_id,
        "name": c.name,
        "status": status,
        "attempt": c.attempt,
        "result": result,
        "next_task_id": next_id,
        "started_at": c.started_at,
        "finished_at": utcnow(),
    }
    if send is None and on_postgresql(s):
        _finish_in_one(s, c, values, entry=status is not StepStatus.WAITING, end=end_of_chain, waiting=waiting)
        return None
    if not _insert_record(s, values):
        raise LostClaim(f"step {c.name} ({c.task_id}): another delivery finished it first")
    if c.receipt:
        outbox.mark_delivered(s, c.receipt)
    if status is not StepStatus.WAITING:
        add_event(
            s,
            c.run_id,
            EventKind.STEP_FINISHED,
            c.name,
            task_id=c.task_id,
            started_at=c.started_at,
            detail={"attempt": c.attempt} if c.attempt > 1 else {},
        )
    if end_of_chain:
        end_run(s, c.run_id, RunStatus.SUCCEEDED, result=result)
    elif c.first and not waiting:  # the run's first journal entry: pending → running (a wait moves it itself)
        move_run(s, c.run_id, RunStatus.RUNNING)
    if send and next_id:
        return outbox.enqueue(s, c.run_id, next_id, send[0], send[1])
    return None


def _finish_in_one(s: Session, c: Claim, values: dict[str, Any], *, entry: bool, end: bool, waiting: bool) -> None:
    """:func:`finish` without a message to send, on PostgreSQL: one statement (:func:`_finish_statement`), so a
    step that is not transactional finishes in one round trip (:func:`hitl.infra.db.statement_scope`)."""
    move = c.first and not waiting and not end
    now = values["finished_at"]
    params = {f"s_{k}": v for k, v in values.items()}
    params.update(b_id=c.run_id, b_now=now, e_name=c.name, e_detail={"attempt": c.attempt} if c.attempt > 1 else {})
    if c.receipt:
        params["o_task_id"] = c.receipt
    if end:
        params["b_result"] = values["result"]
    recorded, entry_id, finished_id = s.execute(_finish_statement(entry, bool(c.receipt), move, end), params).one()
    if recorded is None:
        raise LostClaim(f"step {c.name} ({c.task_id}): another delivery finished it first")
    new: list[dict[str, Any]] = []
    base = {"run_id": c.run_id, "task_id": None, "started_at": None, "at": now}
    if entry_id is not None:
        new.append({**base, "id": entry_id, "kind": EventKind.STEP_FINISHED, "name": c.name, "task_id": c.task_id})
        new[-1].update(detail=params["e_detail"], started_at=c.started_at)
    if finished_id is not None:
        note_locked_run(s, c.run_id)
        new.append({**base, "id": finished_id, "kind": EventKind.FINISHED, "name": RunStatus.SUCCEEDED.value})
        new[-1]["detail"] = {}
    note_new_events(s, new)


@functools.cache
def _finish_statement(entry: bool, receipt: bool, move: bool, end: bool) -> Any:
    """PostgreSQL: the statements of :func:`finish` as one, each part a CTE that writes only if the step record
    was written (``EXISTS (SELECT FROM record)``)::

        WITH record AS (INSERT INTO hitl_steps ... ON CONFLICT ... RETURNING task_id),
             entry AS (INSERT INTO hitl_run_events ... step_finished ... FROM record RETURNING id),  -- entry
             delivered AS (UPDATE hitl_outbox SET delivered_at ... ),                               -- receipt
             moved AS (UPDATE hitl_runs SET status = 'running' ...),                                -- move
             ended AS (UPDATE hitl_runs SET status = 'succeeded', result ... RETURNING id),         -- end
             finished AS (INSERT INTO hitl_run_events ... run_finished ... FROM ended RETURNING id)  -- end
        SELECT (SELECT task_id FROM record), (SELECT id FROM entry), (SELECT id FROM finished)

    Parameters: ``s_<column>`` of the step record, ``b_id`` (the run), ``b_now``, ``e_name``, ``e_detail``,
    ``o_task_id`` (the receipt) and ``b_result`` (the run's result). The first column is NULL when another
    delivery finished the step first: then nothing was written.
    """
    runs, events, rows = tables.runs, tables.run_events, tables.outbox
    stmt = postgresql.insert(_STEPS).values({c.name: bindparam(f"s_{c.name}", type_=c.type) for c in _STEPS.columns})
    record = (
        stmt.on_conflict_do_update(
            index_elements=[_STEPS.c.task_id],
            set_={name: stmt.excluded[name] for name in _RECORD_OVERWRITES},
            where=_STEPS.c.status == StepStatus.STARTED,
        )
        .returning(_STEPS.c.task_id)
        .cte("record")
    )
    written = select(record.c.task_id).exists()
    now = bindparam("b_now", type_=runs.c.updated_at.type)
    run = bindparam("b_id", type_=runs.c.id.type)
    columns = ["run_id", "kind", "name", "task_id", "detail", "started_at", "at"]
    ctes: list[Any] = []
    picked: list[Any] = [select(record.c.task_id).scalar_subquery()]
    if entry:
        step_entry = select(
            run,
            literal(EventKind.STEP_FINISHED.value, events.c.kind.type),
            bindparam("e_name", type_=events.c.name.type),
            record.c.task_id,
            bindparam("e_detail", type_=events.c.detail.type),
            bindparam("s_started_at", type_=events.c.started_at.type),
            now,
        )
        entry_cte = insert(events).from_select(columns, step_entry).returning(events.c.id).cte("entry")
        picked.append(select(entry_cte.c.id).scalar_subquery())
    else:
        picked.append(null())
    if receipt:
        delivered = update(rows).where(rows.c.task_id == bindparam("o_task_id"), rows.c.delivered_at.is_(None), written)
        ctes.append(delivered.values(delivered_at=now).cte("delivered"))
    if move:
        moved = update(runs).where(runs.c.id == run, runs.c.status.in_(run_sources(RunStatus.RUNNING)), written)
        ctes.append(moved.values(status=RunStatus.RUNNING, updated_at=now).cte("moved"))
    if end:
        ended = (
            update(runs)
            .where(runs.c.id == run, runs.c.status.in_(run_sources(RunStatus.SUCCEEDED)), written)
            .values(
                status=RunStatus.SUCCEEDED,
                result=bindparam("b_result", type_=runs.c.result.type),
                updated_at=now,
                finished_at=now,
            )
            .returning(runs.c.id)
            .cte("ended")
        )
        run_entry = select(
            ended.c.id,
            literal(EventKind.FINISHED.value, events.c.kind.type),
            literal(RunStatus.SUCCEEDED.value, events.c.name.type),
            null(),
            literal({}, events.c.detail.type),
            null(),
            now,
        )
        finished = insert(events).from_select(columns, run_entry).returning(events.c.id).cte("finished")
        picked.append(select(finished.c.id).scalar_subquery())
    else:
        picked.append(null())
    return select(*picked).add_cte(*ctes)


# A step that runs long gets its message marked delivered from a per-process thread (see module docstring).
_running: dict[str, float] = {}  # task id -> time.monotonic() at start, of the steps running in this process
_watcher_pid = 0


def watch_interval() -> float:
    """Seconds after which a running step's message is marked delivered: a quarter of
    ``HITL_REDELIVER_AFTER``, between 0.25 and 60."""
    return min(60.0, max(0.25, get_settings().redeliver_after / 4))


@contextlib.contextmanager
def running(task_id: str | None) -> Iterator[None]:
    """Note the step whose message is outbox row ``task_id`` as running in this process for the duration (see
    :func:`watch_interval`); None (a message Celery sent, not the outbox): nothing to note."""
    global _watcher_pid
    if task_id is None:
        yield
        return
    if _watcher_pid != os.getpid():
        _watcher_pid = os.getpid()
        _running.clear()
        threading.Thread(target=_watch, name="hitl-step-watch", daemon=True).start()
    _running[task_id] = time.monotonic()
    try:
        yield
    finally:
        _running.pop(task_id, None)


def _watch() -> None:
    marked: set[str] = set()
    while True:
        interval = watch_interval()
        time.sleep(interval)
        now = time.monotonic()
        long_running = [t for t, started in list(_running.items()) if now - started >= interval]
        marked &= set(long_running)
        due = [t for t in long_running if t not in marked]
        if not due:
            continue
        try:
            with session_scope() as s:
                outbox.mark_delivered(s, *due)
            marked.update(due)
        except Exception as exc:  # the next pass tries again; nothing else depends on this thread
            log.warning("could not mark the messages of running steps %s delivered: %s", due, exc)


def stop(c: Claim, status: RunStatus, result: Any, reason: str | None) -> None:
    """Close the step record as stopped and end the run as ``status`` (see :class:`hitl.Stop`)."""
    with session_scope() as s:
        finish(s, c, StepStatus.STOPPED, result)
        end_run(s, c.run_id, status, {"reason": reason} if reason else None, result=result, error=reason)


def fail(run_id: str, name: str, task_id: str, error: str, attempt: int = 1, receipt: str | None = None) -> None:
    """Record that step ``task_id`` raised after its retries and fail the run — unless another delivery of
    the step finished it first (then nothing changes)."""
    now = utcnow()
    values = {
        "task_id": task_id,
        "run_id": run_id,
        "name": name,
        "status": StepStatus.FAILED,
        "attempt": attempt,
        "result": {"error": error},
        "started_at": now,
        "finished_at": now,
    }
    with session_scope() as s:
        if not _insert_record(s, values):
            log.info("step %s (%s) failed after another delivery finished it; the run goes on", name, task_id)
            return
        if receipt:
            outbox.mark_delivered(s, receipt)
        add_event(s, run_id, EventKind.STEP_FAILED, name, task_id=task_id, detail={"error": error}, started_at=now)
        end_run(s, run_id, RunStatus.FAILED, {"error": error}, error=error)
