"""Workflows used by the tests (loaded by the test workers through HITL_WORKFLOW_MODULES).

Each step that has an effect appends a row to ``test_effects``; counting rows per run and step is how the
tests check that a continuation ran exactly once and what it received.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, select
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
        "assignees": payload.get("assignees", ["testers"]),
    }
    if payload.get("default"):
        wait_kwargs["default"] = payload["default"]
    if payload.get("on_reject"):
        wait_kwargs["on_reject"] = on_reject.s()
    return prepare.s(payload) | hitl.wait_for_approval.s(**wait_kwargs) | after.s() | finish.s()


@hitl.workflow("wait-last")
def wait_last(payload: dict[str, Any]) -> Any:
    """A wait with no continuation: the decision itself ends the run."""
    return prepare.s(payload) | hitl.wait_for_approval.s(key="only", timeout=payload.get("timeout", "1h"))
