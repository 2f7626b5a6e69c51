"""Compiling workflow canvases (no broker, no worker): where waits, run ends and headers go, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest
from celery import chord, group

import hitl
from hitl.delivery.canvas import (
    FINISH_TASK,
    HEADER_LAST,
    HEADER_RUN,
    HEADER_WAIT,
    WAIT_TASK,
    bind_stored,
    compile_canvas,
    map_leaves,
)
from tests import flows


def leaves(sig: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    map_leaves(sig, lambda leaf: found.append(leaf) or leaf)
    return found


def headers(sig: dict[str, Any]) -> dict[str, Any]:
    return dict(sig["options"]["headers"])


def compiled(workflow: Any, payload: Any = None, run_id: str = "r1") -> dict[str, Any]:
    out = compile_canvas(workflow(payload or {}), run_id)
    assert out is not None
    return out


def test_the_task_before_a_wait_carries_it_and_the_last_task_ends_the_run() -> None:
    top = compiled(flows.plain_flow, {"topic": "t"})
    assert top["task"] == "tests.plain.draft"  # one task before the wait: sent alone, no chain
    wait = headers(top)[HEADER_WAIT]
    assert [w["key"] for w in wait["waits"]] == ["review"]
    assert wait["waits"][0]["timeout"] == 3600.0
    assert wait["join"] is None
    after = wait["continuation"]
    assert after["task"] == "tests.plain.effect"
    assert headers(after)[HEADER_LAST] is True
    assert after["kwargs"] == {"run_id": "r1"}  # a plain task that declares run_id receives it
    assert headers(top)[HEADER_RUN] == "r1"
    # what is stored for later gets its run header and task id when it is sent, the same on every re-send
    assert HEADER_RUN not in headers(after) and "task_id" not in after["options"]
    [sent] = bind_stored([after], "r1", "a1.resume")
    assert headers(sent)[HEADER_RUN] == "r1" and headers(sent)[HEADER_LAST] is True
    assert bind_stored([after], "r1", "a1.resume") == [sent]
    assert bind_stored([sent], "r1", "other") == [sent]  # an id once given is kept


def test_task_ids_are_deterministic_per_run() -> None:
    ids = [leaf["options"]["task_id"] for leaf in leaves(compiled(flows.plain_nowait))]
    again = [leaf["options"]["task_id"] for leaf in leaves(compiled(flows.plain_nowait))]
    other = [leaf["options"]["task_id"] for leaf in leaves(compiled(flows.plain_nowait, run_id="r2"))]
    assert ids == again and len(set(ids)) == 3
    assert not set(ids) & set(other)


def test_a_wait_after_a_group_is_the_chords_body_and_a_trailing_group_gets_a_finish() -> None:
    top = compiled(flows.group_subject)
    tasks = top["kwargs"]["tasks"]
    assert [t.get("subtask_type") or t["task"] for t in tasks] == ["group", WAIT_TASK]
    members = tasks[0]["kwargs"]["tasks"]
    assert all(m["options"]["ignore_result"] is False for m in members)  # the chord join reads their results
    assert members[0]["args"] == [0]

    after = compiled(flows.group_after)
    cont = headers(after)[HEADER_WAIT]["continuation"]
    assert [t.get("subtask_type") or t["task"] for t in cont["kwargs"]["tasks"]] == ["group", FINISH_TASK]
    assert all(m["options"]["ignore_result"] is False for m in cont["kwargs"]["tasks"][0]["kwargs"]["tasks"])
    assert headers(cont["kwargs"]["tasks"][1])[HEADER_LAST] is True


def test_a_chord_before_a_wait_hands_the_wait_to_its_body() -> None:
    top = compiled(flows.chord_subject)
    tasks = top["kwargs"]["tasks"]
    assert [t.get("subtask_type") or t["task"] for t in tasks] == ["tests.plain.draft", "group", "tests.plain.join"]
    assert HEADER_WAIT in headers(tasks[-1])


def test_a_group_of_waits_is_one_parallel_wait() -> None:
    wait = headers(compiled(flows.parallel_flow))[HEADER_WAIT]
    assert [w["key"] for w in wait["waits"]] == ["legal", "finance"]
    assert wait["join"] == {"any_rejection_rejects": True}
    lenient = headers(compiled(flows.parallel_flow, {"any_rejection_rejects": False}))[HEADER_WAIT]
    assert lenient["join"] == {"any_rejection_rejects": False}


@pytest.mark.parametrize(
    ("canvas", "message"),
    [
        (lambda: flows.plain_draft.s({}) | group(hitl.wait_for_approval.s(key="k"), flows.plain_part.s(1)), "inside"),
        (lambda: chord([flows.plain_part.s(1), hitl.wait_for_approval.s(key="k")], flows.plain_join.s()), "inside"),
        (lambda: flows.plain_draft.s({}) | flows.plain_part.s(1, 2, 3), "cannot be called"),
        (lambda: flows.plain_draft.s() | flows.plain_effect.s("x"), "cannot be called"),  # draft needs its payload
        (lambda: flows.plain_draft.s({"when": object()}), "not JSON"),
        (lambda: flows.plain_draft.s({"x": float("nan")}), "not JSON"),
        (
            lambda: (
                flows.plain_draft.s({})
                | hitl.parallel(
                    hitl.wait_for_approval.s(key="a", on_reject=flows.finish.s()), hitl.wait_for_approval.s(key="b")
                )
            ),
            "on_reject",
        ),
    ],
)
def test_shapes_hitl_cannot_run_are_refused(canvas: Any, message: str) -> None:
    with pytest.raises(hitl.WorkflowError, match=message):
        compile_canvas(canvas(), "r1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": "999999999w"}, "at most ten years"),
        ({"timeout": "soon"}, "not a duration"),
        ({"timeout": float("nan")}, "positive"),
        ({"default": "maybe"}, "default must be"),
        ({"remind_every": "1h"}, "remind_every needs remind_after"),
    ],
)
def test_bad_wait_options_are_refused_when_the_run_starts(options: dict[str, Any], message: str) -> None:
    canvas = flows.plain_draft.s({}) | hitl.wait_for_approval.s(key="k", **options)
    with pytest.raises(hitl.InvalidPayload, match=message):
        compile_canvas(canvas, "r1")


def test_a_chord_of_waits_is_a_parallel_wait_followed_by_its_body() -> None:
    waits = [hitl.wait_for_approval.s(key="a"), hitl.wait_for_approval.s(key="b")]
    wait = headers(compile_canvas(flows.plain_draft.s({}) | chord(waits, flows.plain_join.s()), "r1") or {})
    assert [w["key"] for w in wait[HEADER_WAIT]["waits"]] == ["a", "b"]
    assert wait[HEADER_WAIT]["continuation"]["task"] == "tests.plain.join"


def test_unknown_wait_options_are_refused_when_the_signature_is_made() -> None:
    with pytest.raises(hitl.InvalidPayload, match="does not take colour"):
        hitl.wait_for_approval.s(key="k", colour="red")


def test_a_first_message_that_cannot_be_built_leaves_no_run(engine_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import func, select

    from approvals.models import OutboxMessage, Run
    from hitl.delivery import canvas
    from hitl.infra.db import session_scope

    def refuse(*_: Any, **__: Any) -> None:
        raise TypeError("Celery refused the arguments")

    monkeypatch.setattr(canvas, "apply_canvas", refuse)
    monkeypatch.setattr("hitl.delivery.outbox.apply_canvas", refuse)
    with pytest.raises(hitl.WorkflowError, match="first message cannot be built: TypeError: Celery refused"):
        hitl.start("plain-nowait", {"topic": "x"})
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0
    monkeypatch.undo()
    run_id = hitl.start("plain-nowait", {"topic": "x"})  # the same workflow starts once Celery takes it
    assert hitl.get_run(run_id).status is hitl.RunStatus.PENDING


def test_a_shape_hitl_cannot_run_is_refused_when_the_workflow_is_registered() -> None:
    from hitl.core.registry import _workflows

    with pytest.raises(hitl.WorkflowError, match="'bad-shape' cannot be registered: a wait cannot stand inside"):

        @hitl.workflow("bad-shape")
        def bad_shape(payload: Any) -> Any:
            return flows.plain_draft.s(payload) | group(hitl.wait_for_approval.s(key="k"), flows.plain_part.s(1))

    assert "bad-shape" not in _workflows


def test_a_registered_workflow_shows_its_shape_in_run_order() -> None:
    from hitl.core.registry import get_workflow

    @hitl.workflow("shape-shown")
    def shape_shown(payload: Any) -> Any:
        return (
            group(flows.plain_part_first.s(1), flows.plain_part_first.s(2))
            | hitl.parallel(hitl.wait_for_approval.s(key="legal"), hitl.wait_for_approval.s(key="finance"))
            | flows.plain_draft.s()
        )

    @hitl.workflow("needs-a-payload")
    def needs_a_payload(payload: Any) -> Any:
        return flows.plain_draft.s(payload["topic"])  # {} has no topic: built per payload, shape unknown

    assert get_workflow("shape-shown").shape == (
        "group(tests.plain.part0, tests.plain.part0) → parallel(wait(legal), wait(finance)) → tests.plain.draft"
    )
    assert get_workflow("needs-a-payload").shape is None


def test_a_sent_message_shows_its_arguments_as_their_repr_cut_at_celerys_limit(engine_env: Any) -> None:
    """What Flower and the worker's log show of a message hitl sends: ``repr`` of its JSON arguments, cut at
    Celery's ``argsrepr_maxsize`` with ``...``, as Celery's ``saferepr`` would show them."""
    from hitl.delivery.canvas import apply_canvas, short_repr
    from hitl.infra.celery_app import app

    decision = {"outcome": "approved", "actor": "ann", "comment": None, "data": {"n": 1.5, "ok": True}}
    big = {"note": "x" * 5000}
    stored = [{"task": "tests.after", "args": [], "kwargs": {}, "options": {}, "subtask_type": None}]
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("celery")
        queue.clear()
        apply_canvas(stored, [decision], "row-1", "run-1")
        apply_canvas(stored, [big], "row-2", "run-1")
        first, second = queue.get(timeout=5), queue.get(timeout=5)
        queue.close()
    assert first.headers["argsrepr"] == repr([decision]) and first.headers["kwargsrepr"] == "{}"
    assert first.headers["root_id"] == "run-1" and first.headers["hitl_receipt"] == "row-1"
    shown = second.headers["argsrepr"]
    assert len(shown) == app.amqp.argsrepr_maxsize and shown.endswith("...") and shown.startswith("[{'note': 'xxx")
    assert short_repr([1, "a"], 1024) == "[1, 'a']" and short_repr([1, 2, 3, 4], 7) == "[1, ..."
