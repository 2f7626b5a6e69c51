"""Status tables, durations, policies and payload rules: pure functions, no database."""

from __future__ import annotations

from datetime import timedelta

import pytest

from approvals.errors import InvalidPayload, PayloadTooLarge
from approvals.models import Approval
from approvals.policy import continuation_for, timeout_outcome
from approvals.schemas import Decision, Outcome
from approvals.status import (
    APPROVAL_TRANSITIONS,
    RUN_TRANSITIONS,
    ApprovalStatus,
    RunStatus,
    approval_sources,
    run_sources,
)
from hitl.infra.jsonsafe import check_size, parse_json, parse_json_object
from hitl.worker.steps import Stop, parse_duration


def test_every_status_has_a_transition_row() -> None:
    assert set(RUN_TRANSITIONS) == set(RunStatus)
    assert set(APPROVAL_TRANSITIONS) == set(ApprovalStatus)


def test_terminal_statuses_are_final() -> None:
    assert {s for s in RunStatus if s.terminal} == {
        RunStatus.SUCCEEDED,
        RunStatus.REJECTED,
        RunStatus.TIMED_OUT,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
    }
    assert {s for s in ApprovalStatus if not s.terminal} == {ApprovalStatus.PENDING}


def test_sources_invert_the_tables() -> None:
    assert approval_sources(ApprovalStatus.APPROVED) == {ApprovalStatus.PENDING}
    assert run_sources(RunStatus.WAITING) == {RunStatus.PENDING, RunStatus.RUNNING}
    assert RunStatus.CANCELLED not in run_sources(RunStatus.RUNNING)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        (45, 45),
        (1.5, 1.5),
        ("30s", 30),
        ("15m", 900),
        ("1h", 3600),
        ("2d", 172800),
        ("1w", 604800),
        ("250ms", 0.25),
        (timedelta(minutes=2), 120),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "soon", "1y", "-5s", 0, "0s"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(InvalidPayload):
        parse_duration(bad)  # type: ignore[arg-type]


def _approval(**kw: object) -> Approval:
    base = {"continuation": [{"task": "c"}], "on_reject": None, "on_timeout": None, "timeout_default": None}
    return Approval(**{**base, **kw})


def test_continuation_policy() -> None:
    plain = _approval()
    assert continuation_for(plain, Outcome.REJECTED) == [{"task": "c"}]
    assert continuation_for(plain, Outcome.TIMED_OUT) == [{"task": "c"}]
    declared = _approval(on_reject=[{"task": "r"}], on_timeout=[{"task": "t"}])
    assert continuation_for(declared, Outcome.APPROVED) == [{"task": "c"}]
    assert continuation_for(declared, Outcome.REJECTED) == [{"task": "r"}]
    assert continuation_for(declared, Outcome.TIMED_OUT) == [{"task": "t"}]


def test_timeout_outcome_uses_the_declared_default() -> None:
    assert timeout_outcome(_approval()) == (Outcome.TIMED_OUT, False)
    assert timeout_outcome(_approval(timeout_default="rejected")) == (Outcome.REJECTED, True)


def test_decision_round_trips_through_json() -> None:
    d = Decision(
        approval_id="a",
        run_id="r",
        key="k",
        outcome=Outcome.APPROVED,
        subject={"x": 1},
        actor="al",
        decided_at="2026-01-01T00:00:00Z",
    )  # type: ignore[arg-type]
    again = Decision.model_validate_json(d.model_dump_json())
    assert again == d and again.approved and again.decided_at.tzinfo is not None


def test_json_parsing_errors_are_usage_errors(tmp_path: object) -> None:
    assert parse_json('{"a": 1}', "--data") == {"a": 1}
    with pytest.raises(InvalidPayload, match="not valid JSON"):
        parse_json("{", "--data")
    with pytest.raises(InvalidPayload, match="must be a JSON object"):
        parse_json_object("[]", "--data")
    assert InvalidPayload.exit_code == 2


def test_payload_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from hitl.infra.settings import get_settings

    monkeypatch.setenv("HITL_MAX_PAYLOAD_BYTES", "100")
    get_settings.cache_clear()
    try:
        assert check_size({"a": "x" * 10}) < 100
        with pytest.raises(PayloadTooLarge, match="limit is 100"):
            check_size({"a": "x" * 200})
    finally:
        monkeypatch.delenv("HITL_MAX_PAYLOAD_BYTES")
        get_settings.cache_clear()


def test_stop_needs_a_terminal_status() -> None:
    assert Stop("rejected").status is RunStatus.REJECTED
    with pytest.raises(ValueError, match="terminal"):
        Stop(RunStatus.WAITING)
