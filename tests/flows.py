"""Workflows used by the tests (loaded by the test workers through HITL_WORKFLOW_MODULES).

Each step that has an effect appends a row to ``test_effects``; counting rows per run and step is how the
tests check that a continuation ran exactly once and what it received.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any, Literal

from celery import chord, group, shared_task, signature
from pydantic import BaseModel, Field
from sqlalchemy import JSON, Integer, String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import hitl
from hitl.infra.db import get_engine, session_scope


class TestBase(DeclarativeBase):
    pass


class Effect(TestBase):
    __tablename__ = "test_effects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    step: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[Any] = mapped_column(JSON)
    at: Mapped[str] = mapped_column(String(40), default=lambda: datetime.now(UTC).isoformat())


def record(step: str, run_id: str | None, task_id: str | None, detail: Any) -> None:
    TestBase.metadata.create_all(get_engine())
    with session_scope() as s:
        s.add(Effect(run_id=run_id, step=step, task_id=task_id, detail=detail))


def effects(run_id: str | None = None, step: str | None = None) -> list[Effect]:
    TestBase.metadata.create_all(get_engine())
    stmt = select(Effect).order_by(Effect.id)
    if run_id is not None:
        stmt = stmt.where(Effect.run_id == run_id)
    if step is not None:
        stmt = stmt.where(Effect.step == step)
    with session_scope() as s:
        return list(s.scalars(stmt))


class ReviewForm(BaseModel):
    """The decision form of the typed gate: what an approver must fill in."""

    rating: int = Field(ge=1, le=5, description="How good is it, 1 to 5.")
    channel: Literal["blog", "newsletter"] = "blog"
    urgent: bool = False


@hitl.step(name="tests.prepare", bind=True)
def prepare(self: hitl.Step, payload: dict[str, Any], run_id: str) -> dict[str, Any]:
    record("prepare", run_id, self.request.id, payload)
    return {"prepared": payload}


@hitl.step(name="tests.after", bind=True)
def after(self: hitl.Step, decision: hitl.Decision, run_id: str) -> dict[str, Any]:
    """Record the decision received; end the run as the decision says."""
    record("after", run_id, self.request.id, decision.model_dump(mode="json"))
    if decision.outcome is hitl.Outcome.REJECTED:
        raise hitl.Stop(hitl.RunStatus.REJECTED, {"outcome": "rejected"}, reason=decision.comment)
    if decision.outcome is hitl.Outcome.TIMED_OUT:
        raise hitl.Stop(hitl.RunStatus.TIMED_OUT, {"outcome": "timed_out"})
    return {"outcome": decision.outcome.value, "data": decision.data}


@hitl.step(name="tests.typed_after", bind=True)
def typed_after(self: hitl.Step, decision: hitl.Decision[ReviewForm], run_id: str) -> dict[str, Any]:
    """Record what type the decision's data arrived as (the parsed form, for a typed wait)."""
    record("typed_after", run_id, self.request.id, {"type": type(decision.data).__name__, "data": repr(decision.data)})
    return {"outcome": decision.outcome.value}


@hitl.step(name="tests.finish", bind=True)
def finish(self: hitl.Step, previous: Any, run_id: str) -> str:
    record("finish", run_id, self.request.id, previous)
    return "done"


@hitl.step(name="tests.on_reject", bind=True)
def on_reject(self: hitl.Step, decision: hitl.Decision, run_id: str) -> str:
    record("on_reject", run_id, self.request.id, decision.model_dump(mode="json"))
    return "handled rejection"


@hitl.app.task(name="tests.ping", bind=True)
def ping(self: Any, n: int) -> int:
    """A plain Celery task (no run), for checking that waiting runs hold no worker."""
    record("ping", None, self.request.id, {"n": n})
    return n


@hitl.workflow("gate")
def gate(payload: dict[str, Any]) -> Any:
    """prepare | wait | after | finish, with options from the payload."""
    wait_kwargs: dict[str, Any] = {
        "key": "gate",
        "timeout": payload.get("timeout", "1h"),
        "assignees": payload.get("assignees", []),
    }
    if payload.get("default"):
        wait_kwargs["default"] = payload["default"]
    if payload.get("on_reject"):
        wait_kwargs["on_reject"] = on_reject.s()
    if payload.get("typed"):
        wait_kwargs["decision"] = ReviewForm
    for option in (
        "quorum",
        "stages",
        "any_rejection_rejects",
        "forbid_requester",
        "idempotency_key",
        "default_data",
        "remind_after",
        "remind_every",
        "escalate_after",
        "escalate_to",
    ):
        if option in payload:
            wait_kwargs[option] = payload[option]
    if payload.get("typed_after"):
        return prepare.s(payload) | hitl.wait_for_approval.s(**wait_kwargs) | typed_after.s()
    return prepare.s(payload) | hitl.wait_for_approval.s(**wait_kwargs) | after.s() | finish.s()


@hitl.workflow("wait-last")
def wait_last(payload: dict[str, Any]) -> Any:
    """A wait with no continuation: the decision itself ends the run."""
    return prepare.s(payload) | hitl.wait_for_approval.s(key="only", timeout=payload.get("timeout", "1h"))


# ---------------------------------------------------------------- fault injection


class EffectRow(TestBase):
    """One applied effect of a transactional step: committed with the step's completion or not at all."""

    __tablename__ = "test_effect_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    label: Mapped[str] = mapped_column(String(16))
    task_id: Mapped[str] = mapped_column(String(255))


class Attempt(TestBase):
    """One attempt of the flaky step (written outside the step's transaction, so failed attempts count)."""

    __tablename__ = "test_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[str] = mapped_column(String(40), default=lambda: datetime.now(UTC).isoformat())


def create_test_tables() -> None:
    TestBase.metadata.create_all(get_engine())


@hitl.step(name="tests.chaos.effect", bind=True, transactional=True)
def chaos_effect(self: hitl.Step, previous: Any, label: str, run_id: str, session: Any) -> Any:
    """Apply one effect (a row) in the step's transaction, after a short pause that widens the kill window."""
    time.sleep(random.uniform(0, 0.02))
    session.add(EffectRow(run_id=run_id, label=label, task_id=self.request.id))
    return {"label": label, "previous": previous if not isinstance(previous, hitl.Decision) else "decision"}


@hitl.workflow("chaos")
def chaos(payload: dict[str, Any]) -> Any:
    """effect a | wait | effect b | effect c: every effect must be applied exactly once."""
    return (
        chaos_effect.s(payload, label="a")
        | hitl.wait_for_approval.s(key="chaos", timeout=payload.get("timeout", "1h"), default=payload.get("default"))
        | chaos_effect.s(label="b")
        | chaos_effect.s(label="c")
    )


class Transient(Exception):
    """A failure worth retrying."""


@hitl.step(
    name="tests.flaky",
    bind=True,
    autoretry_for=(Transient,),
    retry_backoff=1,
    retry_backoff_max=4,
    retry_jitter=False,
    max_retries=5,
)
def flaky(self: hitl.Step, payload: dict[str, Any], run_id: str) -> str:
    """Fail the first ``payload['failures']`` attempts, then succeed."""
    attempts = count_attempt(run_id)
    if attempts <= int(payload.get("failures", 2)):
        raise Transient(f"attempt {attempts} fails")
    return f"succeeded at attempt {attempts}"


@hitl.workflow("flaky")
def flaky_flow(payload: dict[str, Any]) -> Any:
    """flaky (fails twice, retried with backoff) | effect b | effect c."""
    return flaky.s(payload) | chaos_effect.s(label="b") | chaos_effect.s(label="c")


def count_attempt(run_id: str) -> int:
    """Note one more attempt of ``run_id``'s step outside any step transaction; return the count so far."""
    with session_scope() as s:
        s.add(Attempt(run_id=run_id))
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Attempt).where(Attempt.run_id == run_id)) or 0)


@hitl.step(name="tests.severed", bind=True, transactional=True)
def severed(self: hitl.Step, payload: dict[str, Any], run_id: str, session: Any) -> str:
    """Apply effect ``a`` in the step's transaction; on the first attempt the PostgreSQL server then ends this
    transaction's connection (``pg_terminate_backend``, as a failover or a connection killer would)."""
    attempt = count_attempt(run_id)
    session.add(EffectRow(run_id=run_id, label="a", task_id=self.request.id))
    session.flush()
    if attempt == 1:
        session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    return f"applied at attempt {attempt}"


@hitl.workflow("severed")
def severed_flow(payload: dict[str, Any]) -> Any:
    """severed (its connection dropped on the first attempt) | effect b | effect c."""
    return severed.s(payload) | chaos_effect.s(label="b") | chaos_effect.s(label="c")


@hitl.step(name="tests.slow", bind=True)
def slow(self: hitl.Step, payload: dict[str, Any], run_id: str) -> str:
    """Record one effect per execution of the body, then sleep ``payload["seconds"]`` (a long step)."""
    record("slow", run_id, self.request.id, payload)
    time.sleep(float(payload["seconds"]))
    return "slept"


@hitl.workflow("slow")
def slow_flow(payload: dict[str, Any]) -> Any:
    """One long step."""
    return slow.s(payload)


# ---------------------------------------------------------------- plain Celery tasks and canvas in workflows
# These are the team's own Celery tasks: no @hitl.step, no run_id unless they declare it.


@shared_task(name="tests.plain.draft")
def plain_draft(payload: dict[str, Any]) -> dict[str, Any]:
    """A plain @shared_task: no run_id, no hitl."""
    return {"draft": f"about {payload.get('topic', 'nothing')}"}


@hitl.app.task(name="tests.plain.effect", bind=True)
def plain_effect(self: Any, previous: Any, label: str, run_id: str) -> Any:
    """A plain @app.task that declares run_id (so it receives it) and records what it received."""
    record(label, run_id, self.request.id, previous)
    return {"after": label, "got": previous}


@hitl.app.task(name="tests.plain.part")
def plain_part(previous: Any, index: int) -> dict[str, Any]:
    """A group member: its result goes into the group's list."""
    return {"part": index}


@hitl.app.task(name="tests.plain.part0")
def plain_part_first(index: int) -> dict[str, Any]:
    """A group member at the start of a run (nothing before it)."""
    return {"part": index}


@hitl.app.task(name="tests.plain.join")
def plain_join(parts: list[Any]) -> dict[str, Any]:
    """A chord body: receives the list of its header's results."""
    return {"joined": sorted(p["part"] for p in parts)}


@hitl.app.task(
    name="tests.plain.fails",
    bind=True,
    autoretry_for=(ValueError,),
    max_retries=2,
    default_retry_delay=0.1,
)
def plain_fails(self: Any, previous: Any, run_id: str) -> None:
    """Fails on every attempt (Celery retries it twice, then gives up)."""
    record("plain_fails", run_id, self.request.id, {"retries": self.request.retries})
    raise ValueError("the payment provider said no")


def _review(key: str = "review", **extra: Any) -> Any:
    return hitl.wait_for_approval.s(key=key, timeout=extra.pop("timeout", "1h"), **extra)


@hitl.workflow("plain")
def plain_flow(payload: dict[str, Any]) -> Any:
    """Plain tasks around a wait."""
    wait: dict[str, Any] = {"timeout": payload.get("timeout", "1h")}
    if payload.get("default"):
        wait["default"] = payload["default"]
    return plain_draft.s(payload) | _review(**wait) | plain_effect.s("decided")


@hitl.workflow("plain-nowait")
def plain_nowait(payload: dict[str, Any]) -> Any:
    """Plain tasks only: hitl records the run's start and end."""
    return plain_draft.s(payload) | plain_effect.s("one") | plain_effect.s("two")


@hitl.workflow("group-subject")
def group_subject(payload: dict[str, Any]) -> Any:
    """A group at the start: its results are the approval's subject."""
    return group(plain_part_first.s(i) for i in range(3)) | _review() | plain_effect.s("decided")


@hitl.workflow("chord-subject")
def chord_subject(payload: dict[str, Any]) -> Any:
    """A chord feeds the wait: the subject is the chord body's result."""
    return (
        plain_draft.s(payload)
        | chord([plain_part.s(i) for i in range(3)], plain_join.s())
        | _review()
        | plain_effect.s("decided")
    )


@hitl.workflow("group-after")
def group_after(payload: dict[str, Any]) -> Any:
    """A group of notifications after the decision; the run ends when both have."""
    return plain_draft.s(payload) | _review() | group(plain_effect.s("notify-a"), plain_effect.s("notify-b"))


@hitl.workflow("parallel")
def parallel_flow(payload: dict[str, Any]) -> Any:
    """Legal and finance asked at once; the run goes on once, with both decisions."""
    waits = [_review("legal", assignees=["legal"]), _review("finance", assignees=["finance"])]
    both = hitl.parallel(*waits, any_rejection_rejects=payload.get("any_rejection_rejects", True))
    return plain_draft.s(payload) | both | plain_effect.s("signed")


@hitl.workflow("mixed")
def mixed_flow(payload: dict[str, Any]) -> Any:
    """Plain tasks, journaled steps, a group before a wait, a parallel wait, a group after."""
    return (
        plain_draft.s(payload)
        | chaos_effect.s("j1")
        | group(plain_part.s(i) for i in range(2))
        | _review("first")
        | chaos_effect.s("j2")
        | group(_review("legal"), _review("finance"))
        | chaos_effect.s("j3")
        | group(plain_effect.s("note-a"), plain_effect.s("note-b"))
    )


@hitl.workflow("broken-unknown-task")
def broken_unknown_task(payload: dict[str, Any]) -> Any:
    """A task no worker has, after a plain one."""
    return plain_draft.s(payload) | signature("tests.no_such_task")


@hitl.workflow("broken-args")
def broken_args(payload: dict[str, Any]) -> Any:
    """A task called with arguments it cannot take (refused by hitl start: built only from a real payload)."""
    return plain_draft.s(payload["topic"]) | plain_part.s(1, 2, 3)


@hitl.workflow("broken-shape")
def broken_shape(payload: dict[str, Any]) -> Any:
    """A wait inside a group of other tasks (refused by hitl start: built only from a real payload)."""
    return plain_draft.s(payload["topic"]) | group(_review(), plain_part.s(1))


@hitl.workflow("plain-fails")
def plain_fails_flow(payload: dict[str, Any]) -> Any:
    """A plain task that fails after its retries."""
    return plain_draft.s(payload) | plain_fails.s()


@hitl.app.task(name="tests.chaos.plain_mark", bind=True)
def plain_mark(self: Any, previous: Any, label: str, run_id: str) -> str:
    """A plain task's effect: a row written in a transaction of its own (at least once, as Celery delivers it)."""
    with session_scope() as s:
        s.add(EffectRow(run_id=run_id, label=label, task_id=self.request.id))
    return label


#: Effects of ``chaos-mixed``: journaled steps' (exactly once) and plain tasks' (at least once).
MIXED_EXACTLY_ONCE = ("a", "b", "c")
MIXED_AT_LEAST_ONCE = ("p1", "g1", "g2", "n1", "n2")


@hitl.workflow("chaos-mixed")
def chaos_mixed(payload: dict[str, Any]) -> Any:
    """Plain tasks, journaled steps, a group before a wait, a parallel wait and a group after it."""
    wait: dict[str, Any] = {"timeout": payload.get("timeout", "1h"), "default": payload.get("default")}
    return (
        plain_mark.s(payload, "p1")
        | chaos_effect.s(label="a")
        | group(plain_mark.s("g1"), plain_mark.s("g2"))
        | hitl.wait_for_approval.s(key="mixed", **wait)
        | chaos_effect.s(label="b")
        | group(hitl.wait_for_approval.s(key="legal", **wait), hitl.wait_for_approval.s(key="finance", **wait))
        | chaos_effect.s(label="c")
        | group(plain_mark.s("n1"), plain_mark.s("n2"))
    )
