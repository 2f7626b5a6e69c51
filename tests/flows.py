"""Workflows used by the tests (loaded by the test workers through HITL_WORKFLOW_MODULES).

Each step that has an effect appends a row to ``test_effects``; counting rows per run and step is how the
tests check that a continuation ran exactly once and what it received.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import JSON, Integer, String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import hitl
from hitl.db import get_engine, session_scope


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
