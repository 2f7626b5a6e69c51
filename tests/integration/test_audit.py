"""The audit log against real processes (worker, beat, ``hitl serve``, the CLI) on SQLite and PostgreSQL.

Every channel's decisions and refused attempts land in one hash chain; ``hitl audit verify`` finds an edited
or deleted entry; concurrent deciders never fork the chain.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import text

import hitl
from approvals.errors import AlreadyDecided
from approvals.models import AuditRecord
from hitl import audit
from hitl.db import session_scope
from tests.support import ApiServer, Stack, start_gate, wait_for

pytestmark = pytest.mark.integration

ALL = ("read", "start", "decide", "cancel", "delegate")


def audit_of(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    res = stack.cli("audit", "show", run_id, "--json")
    assert res.code == 0, res.err
    found: list[dict[str, Any]] = res.json()
    return found


def rows(entries: list[dict[str, Any]]) -> list[tuple[str, str, str, str | None, bool]]:
    return [(e["action"], e["actor"], e["channel"], e["outcome"], e["accepted"]) for e in entries]


def verify(stack: Stack) -> tuple[int, dict[str, Any]]:
    res = stack.cli("audit", "verify", "--json")
    assert "Traceback" not in res.out + res.err
    return res.code, res.json()


def test_decisions_and_refusals_on_every_channel_are_in_the_runs_audit(api: ApiServer) -> None:
    stack = api.stack
    ops = api.client(api.key("ops", *ALL))
    bob = api.client(api.key("bob", "read", "decide"))
    viewer = api.client(api.key("victor", "read"))

    # CLI decides; a second decision over HTTP is refused with 409.
    run_a, a = start_gate(ops, n=1)
    assert stack.cli("approve", a["id"], "--by", "alice", "--comment", "from the terminal").code == 0
    again = bob.post(f"/api/v1/approvals/{a['id']}/reject", json={"reason": "too late"})
    assert again.status_code == 409
    # A key without the decide scope gets 403; then a decision over HTTP with data.
    run_b, b = start_gate(ops, n=2)
    assert viewer.post(f"/api/v1/approvals/{b['id']}/approve", json={"comment": "me too"}).status_code == 403
    ok = bob.post(f"/api/v1/approvals/{b['id']}/approve", json={"comment": "over http", "data": {"k": 1}})
    assert ok.status_code == 200, ok.text
    # A signed link decides once; clicking it again is refused.
    run_c, c = start_gate(ops, n=3)
    link = stack.cli("approvals", "link", c["id"], "--for", "dave", "--json")
    assert link.code == 0, link.err
    browser = api.client()
    assert browser.post(link.json()["url"], data={"comment": "via email"}).status_code == 200
    assert browser.post(link.json()["url"], data={}).status_code == 409

    first = audit_of(stack, run_a)
    assert rows(first) == [("decide", "alice", "cli", "approved", True), ("decide", "bob", "http", "rejected", False)]
    assert first[0]["comment"] == "from the terminal" and first[0]["reason"] is None
    assert first[1]["reason"] == f"approval {a['id']} was already approved" and first[1]["comment"] == "too late"
    second = audit_of(stack, run_b)
    assert rows(second) == [
        ("decide", "victor", "http", "approved", False),
        ("decide", "bob", "http", "approved", True),
    ]
    assert "decide" in second[0]["reason"] and second[0]["comment"] == "me too"
    assert second[1]["payload_hash"] == audit.payload_hash({"k": 1})
    third = audit_of(stack, run_c)
    assert rows(third) == [("decide", "dave", "link", "approved", True), ("decide", "dave", "link", "approved", False)]
    assert "already approved" in third[1]["reason"]

    table = stack.cli("audit", "show", run_a)
    assert table.code == 0, table.err
    assert "alice" in table.out and "accepted" in table.out and "refused" in table.out
    assert first[1]["hash"][:12] in table.out and "already approved" in table.out
    code, report = verify(stack)
    assert code == 0 and report["ok"] is True
    assert report["head_hash"] == audit.entries()[-1].hash
    text_report = stack.cli("audit", "verify")
    assert text_report.code == 0 and report["head_hash"] in text_report.out


def test_timeouts_cancels_and_decisions_after_them_are_recorded(stack: Stack) -> None:
    timed_out = hitl.start("gate", {"timeout": "1s"})
    due = wait_for(lambda: hitl.list_approvals(run_id=timed_out), what="the run's approval")[0]
    wait_for(lambda: audit_of(stack, timed_out), timeout=30, what="the sweep to time the approval out")
    assert rows(audit_of(stack, timed_out)) == [("timeout", "hitl:deadline", "deadline", "timed_out", True)]
    late = stack.cli("approve", due.id, "--by", "alice")
    assert late.code == 1

    cancelled = hitl.start("gate", {})
    pending = wait_for(lambda: hitl.list_approvals(run_id=cancelled), what="the run's approval")[0]
    assert stack.cli("runs", "cancel", cancelled, "--by", "ops", "--reason", "obsolete").code == 0
    assert stack.cli("approve", pending.id, "--by", "alice").code == 1
    assert stack.cli("runs", "cancel", cancelled, "--by", "ops").code == 1
    assert stack.cli("approve", "no-such-approval", "--by", "mallory").code == 1

    assert rows(audit_of(stack, timed_out))[1] == ("decide", "alice", "cli", "approved", False)
    assert "timed out" in audit_of(stack, timed_out)[1]["reason"]
    entries = audit_of(stack, cancelled)
    assert rows(entries) == [
        ("cancel", "ops", "cli", "cancelled", True),
        ("decide", "alice", "cli", "approved", False),
        ("cancel", "ops", "cli", "cancelled", False),
    ]
    assert entries[0]["comment"] == "obsolete"
    assert "cancelled" in entries[1]["reason"] and "already finished" in entries[2]["reason"]
    [missing] = audit.entries(approval_id="no-such-approval")
    assert (missing.actor, missing.accepted) == ("mallory", False)
    assert verify(stack)[0] == 0


def concurrent_decisions(stack: Stack, n: int = 20, racers: int = 10) -> None:
    """Decide ``n`` approvals at once from ``n`` threads, while ``racers`` more threads race on one approval."""
    run_ids = [hitl.start("gate", {"i": i}) for i in range(n + 1)]
    approvals = [
        wait_for(lambda r=r: hitl.list_approvals(run_id=r), timeout=120, what=f"run {r} to wait")[0].id for r in run_ids
    ]
    contested = approvals.pop()
    barrier = threading.Barrier(n + racers)
    won: list[str] = []
    lost: list[str] = []
    failures: list[BaseException] = []

    def decide(approval_id: str, actor: str) -> None:
        barrier.wait()
        try:
            hitl.decide(approval_id, "approved", actor=actor, comment=actor)
            won.append(actor)
        except AlreadyDecided:
            lost.append(actor)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=decide, args=(a, f"user{i}")) for i, a in enumerate(approvals)]
    threads += [threading.Thread(target=decide, args=(contested, f"racer{i}")) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert len(won) == n + 1 and len(lost) == racers - 1
    for i, approval_id in enumerate(approvals):
        assert [(e.actor, e.accepted) for e in audit.entries(approval_id=approval_id)] == [(f"user{i}", True)]
    on_contested = audit.entries(approval_id=contested)
    assert sorted(e.accepted for e in on_contested) == [False] * (racers - 1) + [True]


def test_concurrent_deciders_never_fork_the_chain(stack: Stack) -> None:
    concurrent_decisions(stack)
    code, report = verify(stack)
    assert code == 0 and report["ok"], report
    chain = audit.entries()
    assert len({e.prev_hash for e in chain}) == len(chain)  # no two entries chained onto the same one


def test_verify_names_an_edited_and_a_deleted_entry(stack: Stack) -> None:
    run_id = hitl.start("gate", {})
    approval = wait_for(lambda: hitl.list_approvals(run_id=run_id), what="the run's approval")[0]
    assert stack.cli("approve", approval.id, "--by", "alice", "--comment", "fine").code == 0
    for late in ("bob", "carol"):
        assert stack.cli("reject", approval.id, "--by", late, "--reason", "late").code == 1
    chain = audit.entries()
    assert len(chain) >= 3
    edited = next(e for e in audit.entries(run_id=run_id) if e.action == "decide")
    assert verify(stack)[0] == 0

    with session_scope() as s:
        s.execute(text("UPDATE hitl_audit SET comment = 'not fine' WHERE id = :id"), {"id": edited.id})
    code, report = verify(stack)
    assert code == 1
    assert (report["ok"], report["broken_id"], report["problem"]) == (False, edited.id, "edited")
    shown = stack.cli("audit", "verify")
    assert shown.code == 1 and f"entry {edited.id}" in shown.out and "edited" in shown.out
    assert "Traceback" not in shown.out + shown.err
    with session_scope() as s:
        s.execute(text("UPDATE hitl_audit SET comment = 'fine' WHERE id = :id"), {"id": edited.id})
    assert verify(stack)[0] == 0  # restored as it was: intact again

    before, middle, after = chain[len(chain) // 2 - 1 : len(chain) // 2 + 2]
    with session_scope() as s:
        s.execute(text("DELETE FROM hitl_audit WHERE id = :id"), {"id": middle.id})
    code, report = verify(stack)
    assert code == 1
    assert (report["broken_id"], report["problem"]) == (after.id, "deleted_or_reordered")
    assert f"hash of entry {before.id}" in report["detail"]
    with session_scope() as s:
        s.add(AuditRecord(**middle.model_dump()))
    assert verify(stack)[0] == 0

    # Removing the newest entry leaves a valid chain; the head hash kept from before tells.
    code, report = verify(stack)
    newest = audit.entries()[-1]
    with session_scope() as s:
        s.execute(text("DELETE FROM hitl_audit WHERE id = :id"), {"id": newest.id})
    assert verify(stack)[0] == 0
    cut = stack.cli("audit", "verify", "--anchor", report["head_hash"])
    assert cut.code == 1 and "truncated" in cut.out and "Traceback" not in cut.out + cut.err
    with session_scope() as s:
        s.add(AuditRecord(**newest.model_dump()))
    assert stack.cli("audit", "verify", "--anchor", report["head_hash"]).code == 0
