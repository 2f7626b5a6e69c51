"""Approval policies enforced by the engine, with real worker and beat processes, on SQLite and PostgreSQL:
assignees and groups, the requester rule, quorum, sequential sign-off, typed decisions, deadline defaults
and early completion (lookback). Decisions go through the CLI and the HTTP API as people's would."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.flows import effects
from tests.support import ApiServer, Stack, start_gate, wait_for

pytestmark = pytest.mark.integration

ALL = ("read", "start", "decide", "cancel", "delegate")


def start(stack: Stack, *by: str, **payload: Any) -> tuple[str, str]:
    """Start a gate run through the CLI (``by``: the requester) and return (run id, approval id)."""
    file = stack.home / "payload.json"  # @file: a big payload does not fit in one argument
    file.write_text(json.dumps(payload))
    res = stack.cli("start", "gate", "--payload", f"@{file}", *(("--by", by[0]) if by else ()))
    assert res.code == 0, res.err
    run_id = res.out.strip()

    def pending() -> Any:
        rows = stack.cli("approvals", "list", "--run", run_id, "--status", "all", "--json").json()
        return rows[0]["id"] if rows else None

    return run_id, wait_for(pending, what=f"run {run_id} to wait")


def run(stack: Stack, run_id: str) -> dict[str, Any]:
    return dict(stack.cli("runs", "show", run_id, "--json").json())


def finished(stack: Stack, run_id: str) -> str:
    return str(wait_for(lambda: run(stack, run_id)["finished_at"] and run(stack, run_id)["status"], what="the run"))


def refusals(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    return [e["detail"] for e in run(stack, run_id)["timeline"] if e["kind"] == "decision_refused"]


@pytest.fixture(scope="module", autouse=True)
def approver_groups(stack: Stack) -> None:
    for group, members in {"reviewers": ["alice", "bob", "carol"], "legal": ["lena"], "finance": ["fred"]}.items():
        assert stack.cli("groups", "add", group, *members).code == 0


def test_only_assignees_decide_and_refusals_are_recorded(stack: Stack) -> None:
    run_id, approval = start(stack, assignees=["reviewers", "dana"])
    outsider = stack.cli("approve", approval, "--by", "mallory")
    assert outsider.code == 1 and "not among the assignees" in outsider.err
    assert refusals(stack, run_id)[0]["actor"] == "mallory"
    assert stack.cli("approvals", "show", approval, "--json").json()["status"] == "pending"
    assert stack.cli("approve", approval, "--by", "dana").code == 0  # a user named directly
    assert finished(stack, run_id) == "succeeded"
    run_id, approval = start(stack, assignees=["reviewers"])
    assert stack.cli("approve", approval, "--by", "bob").code == 0  # a member of the group
    assert finished(stack, run_id) == "succeeded"


def test_the_requester_may_not_approve_their_own_request(stack: Stack) -> None:
    run_id, approval = start(stack, "alice", assignees=["reviewers"], forbid_requester=True)
    own = stack.cli("approve", approval, "--by", "alice")
    assert own.code == 1 and "requested this" in own.err
    assert stack.cli("approve", approval, "--by", "carol").code == 0
    assert finished(stack, run_id) == "succeeded"
    assert run(stack, run_id)["approvals"][0]["decision"]["actor"] == "carol"


def test_quorum_of_two_settles_once_with_every_vote(stack: Stack) -> None:
    run_id, approval = start(stack, assignees=["reviewers"], quorum=2)
    first = stack.cli("approve", approval, "--by", "alice", "--comment", "fine by me")
    assert first.code == 0 and "waiting for more votes" in first.out
    assert run(stack, run_id)["status"] == "waiting"
    again = stack.cli("approve", approval, "--by", "alice")
    assert again.code == 1 and "already voted" in again.err
    assert stack.cli("approve", approval, "--by", "bob", "--json").json()["settled"] is True
    assert finished(stack, run_id) == "succeeded"
    after = effects(run_id, "after")
    assert len(after) == 1
    assert [v["actor"] for v in after[0].detail["votes"]] == ["alice", "bob"]
    assert stack.cli("approve", approval, "--by", "carol").code == 1  # settled: no more votes


def test_concurrent_votes_settle_a_quorum_exactly_once(stack: Stack) -> None:
    run_id, approval = start(stack, assignees=["reviewers"], quorum=2)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda who: stack.cli("approve", approval, "--by", who), ["alice", "bob", "carol"]))
    assert sum(r.code == 0 for r in results) >= 2
    assert finished(stack, run_id) == "succeeded"
    assert len(effects(run_id, "after")) == 1
    shown = stack.cli("approvals", "show", approval, "--json").json()
    assert shown["status"] == "approved" and len(shown["votes"]) == 2


def test_any_rejection_rejects_unless_configured_otherwise(stack: Stack) -> None:
    run_id, approval = start(stack, assignees=["reviewers"], quorum=2)
    assert stack.cli("reject", approval, "--by", "carol", "--reason", "no").code == 0
    assert finished(stack, run_id) == "rejected"
    run_id, approval = start(stack, assignees=["reviewers"], quorum=2, any_rejection_rejects=False)
    assert stack.cli("reject", approval, "--by", "carol", "--reason", "no").code == 0
    assert run(stack, run_id)["status"] == "waiting"  # two of three can still approve
    assert stack.cli("reject", approval, "--by", "bob", "--reason", "no").code == 0
    assert finished(stack, run_id) == "rejected"  # 3 - 2 rejections < quorum 2


def test_sequential_sign_off_legal_then_finance(stack: Stack) -> None:
    run_id, approval = start(stack, stages=[["legal"], ["finance"]])
    early = stack.cli("approve", approval, "--by", "fred")
    assert early.code == 1 and "stage 1" in early.err
    assert stack.cli("approve", approval, "--by", "lena").code == 0
    shown = stack.cli("approvals", "show", approval, "--json").json()
    assert shown["stage"] == 1 and shown["assignees"] == ["finance"] and shown["status"] == "pending"
    assert stack.cli("approve", approval, "--by", "lena").code == 1  # legal signed; finance's turn
    assert stack.cli("approve", approval, "--by", "fred").code == 0
    assert finished(stack, run_id) == "succeeded"
    votes = effects(run_id, "after")[0].detail["votes"]
    assert [(v["stage"], v["actor"]) for v in votes] == [(0, "lena"), (1, "fred")]


def test_typed_decision_reaches_the_continuation_as_the_parsed_model(stack: Stack) -> None:
    run_id, approval = start(stack, typed=True, typed_after=True)
    bad = stack.cli("approve", approval, "--by", "x", "--data", '{"rating": 0}')
    assert bad.code == 2 and "rating" in bad.err
    assert stack.cli("approve", approval, "--by", "x", "--data", '{"rating": 5}').code == 0
    assert finished(stack, run_id) == "succeeded"
    got = effects(run_id, "typed_after")[0].detail
    assert got["type"] == "ReviewForm" and "rating=5" in got["data"]


def test_deadline_defaults_fail_or_approve_with_a_value(stack: Stack) -> None:
    failing, _ = start(stack, timeout="1s", default="failed")
    valued, _ = start(stack, timeout="1s", default="approved", default_data={"rating": 3})
    assert finished(stack, failing) == "failed"
    assert finished(stack, valued) == "succeeded"
    decision = effects(valued, "after")[0].detail
    assert decision["defaulted"] is True and decision["data"] == {"rating": 3}


@pytest.fixture(scope="module")
def http(api: ApiServer) -> Any:
    return api.client(api.key("webapp", *ALL))


def test_lookback_decided_ahead_continues_without_pausing(stack: Stack, http: Any) -> None:
    made = http.post("/api/v1/approvals", json={"key": "gate", "idempotency_key": "order-1", "subject": {"o": 1}})
    assert made.status_code == 201, made.text
    approval = made.json()
    assert approval["run_id"] is None and approval["status"] == "pending"
    assert (
        http.post("/api/v1/approvals", json={"key": "gate", "idempotency_key": "order-1"}).json()["id"]
        == approval["id"]
    )
    assert http.post(f"/api/v1/approvals/{approval['id']}/approve", json={"comment": "pre-approved"}).status_code == 200
    res = http.post("/api/v1/runs", json={"workflow": "gate", "payload": {"idempotency_key": "order-1"}})
    run_id = res.json()["run_id"]
    assert finished(stack, run_id) == "succeeded"
    timeline = run(stack, run_id)["timeline"]
    assert not [e for e in timeline if e["kind"] == "waiting_for_input" and not e["detail"].get("created_ahead")]
    after = effects(run_id, "after")[0].detail
    assert after["comment"] == "pre-approved" and after["approval_id"] == approval["id"]


def test_lookback_still_pending_waits_on_the_same_approval(stack: Stack, http: Any) -> None:
    made = http.post("/api/v1/approvals", json={"key": "gate", "idempotency_key": "order-2"}).json()
    run_id, waiting = start_gate(http, idempotency_key="order-2")
    assert waiting["id"] == made["id"] and waiting["run_id"] == run_id
    assert http.post(f"/api/v1/approvals/{made['id']}/approve", json={}).status_code == 200
    assert finished(stack, run_id) == "succeeded"
    second = http.post("/api/v1/runs", json={"workflow": "gate", "payload": {"idempotency_key": "order-2"}})
    assert finished(stack, second.json()["run_id"]) == "failed"  # the key belongs to the first run


def test_a_large_input_is_stored_once_and_passed_by_reference(stack: Stack) -> None:
    from sqlalchemy import func, select

    from approvals.models import Blob, OutboxMessage
    from hitl.infra.db import session_scope

    big = {"notes": "x" * 100_000}  # over HITL_INLINE_PAYLOAD_BYTES (64 KiB), under HITL_MAX_PAYLOAD_BYTES
    first, _ = start(stack, **big)
    second, _ = start(stack, **big)
    for run_id in (first, second):
        assert effects(run_id, "prepare")[0].detail == big  # the step got the value itself
        assert run(stack, run_id)["payload"]["type"] == "hitl.ref"
    with session_scope() as s:
        message = s.scalar(select(OutboxMessage).where(OutboxMessage.task_id == f"{first}.start"))
        assert message is not None
        assert len(str(message.signature)) < 5_000  # the message carries the reference, not 100 kB
        assert s.scalar(select(func.count()).select_from(Blob)) == 1  # stored once for both runs
    (stack.home / "huge.json").write_text(json.dumps({"notes": "x" * 300_000}))
    too_big = stack.cli("start", "gate", "--payload", f"@{stack.home / 'huge.json'}")
    assert too_big.code == 2 and "HITL_MAX_PAYLOAD_BYTES" in too_big.err
