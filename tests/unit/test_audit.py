"""The audit log's hash chain on a SQLite file: appending, and finding edited, deleted and moved entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

import hitl
from approvals.errors import AlreadyDecided, ApprovalNotFound, InvalidDecision, InvalidTransition, NotAllowed
from approvals.models import Approval, AuditRecord, Run, utcnow
from approvals.status import ApprovalStatus, RunStatus
from hitl import audit
from hitl.completion import decide, refuse, sweep_deadlines
from hitl.db import session_scope
from hitl.ids import new_id
from tests.unit.test_completion import waiting_run


def append(n: int) -> list[int]:
    """Append ``n`` accepted decisions by user0, user1, ...; return their ids."""
    ids = []
    for i in range(n):
        with session_scope() as s:
            entry_id = audit.record(
                s,
                action="decide",
                actor=f"user{i}",
                channel="cli",
                accepted=True,
                outcome="approved",
                comment=f"comment {i}",
                payload={"i": i},
            )
            ids.append(entry_id)
    return ids


def sql(statement: str, **params: object) -> None:
    with session_scope() as s:
        s.execute(text(statement), params)


def test_entries_chain_from_genesis_and_verify(engine_env: Path) -> None:
    ids = append(3)
    rows = audit.entries()
    assert [e.id for e in rows] == ids
    assert rows[0].prev_hash == audit.GENESIS
    assert [e.prev_hash for e in rows[1:]] == [e.hash for e in rows[:-1]]
    assert rows[1].payload_hash == audit.payload_hash({"i": 1})
    report = audit.verify()
    assert report.ok and report.checked == 3
    assert (report.head_id, report.head_hash) == (ids[-1], rows[-1].hash)


def test_record_many_continues_the_chain_in_order(engine_env: Path) -> None:
    first = append(1)
    with session_scope() as s:
        audit.record_many(
            s,
            [
                audit.entry_fields(
                    action="timeout",
                    actor="hitl:deadline",
                    channel="deadline",
                    accepted=True,
                    approval_id=f"a{i}",
                    run_id=f"r{i}",
                    outcome="timed_out",
                    payload={},
                )
                for i in range(5)
            ],
        )
    append(1)
    rows = audit.entries()
    assert rows[0].id == first[0] and [e.approval_id for e in rows[1:6]] == [f"a{i}" for i in range(5)]
    assert [e.prev_hash for e in rows[1:]] == [e.hash for e in rows[:-1]]
    report = audit.verify()
    assert report.ok and report.checked == 7
    sql("UPDATE hitl_audit SET actor = 'mallory' WHERE approval_id = 'a2'")
    assert audit.verify().broken_id == rows[3].id


def test_an_empty_log_verifies(engine_env: Path) -> None:
    report = audit.verify()
    assert report.ok and report.checked == 0 and report.head_hash is None


def test_payload_hash_is_canonical() -> None:
    assert audit.payload_hash({"b": [1, 2], "a": "é"}) == audit.payload_hash({"a": "é", "b": [1, 2]})
    assert audit.payload_hash({"a": 1}) != audit.payload_hash({"a": 2})
    assert audit.payload_hash(None) == audit.payload_hash(None) != audit.payload_hash({})


def test_hash_covers_every_field(engine_env: Path) -> None:
    [entry_id] = append(1)
    with session_scope() as s:
        row = s.get_one(AuditRecord, entry_id)
        fields = {name: getattr(row, name) for name in audit.HASHED_FIELDS}
    assert audit.entry_hash(fields) == row.hash
    for name, other in [("actor", "mallory"), ("accepted", False), ("comment", None), ("prev_hash", "1" * 64)]:
        assert audit.entry_hash({**fields, name: other}) != row.hash, name


@pytest.mark.parametrize(
    ("column", "value"),
    [("comment", "changed"), ("actor", "mallory"), ("accepted", False), ("outcome", "rejected"), ("reason", "x")],
)
def test_an_edited_entry_is_named(engine_env: Path, column: str, value: object) -> None:
    ids = append(4)
    sql(f"UPDATE hitl_audit SET {column} = :v WHERE id = :id", v=value, id=ids[1])
    report = audit.verify()
    assert not report.ok
    assert (report.broken_id, report.problem, report.checked) == (ids[1], "edited", 2)
    assert report.head_id == ids[0]
    assert f"entry {ids[1]}" in (report.detail or "")


def test_an_edited_time_is_detected(engine_env: Path) -> None:
    ids = append(2)
    with session_scope() as s:
        row = s.get_one(AuditRecord, ids[0])
        row.at = row.at.replace(microsecond=(row.at.microsecond + 1) % 1_000_000)
    report = audit.verify()
    assert (report.ok, report.broken_id, report.problem) == (False, ids[0], "edited")


def test_a_deleted_middle_entry_breaks_the_next_link(engine_env: Path) -> None:
    ids = append(5)
    sql("DELETE FROM hitl_audit WHERE id = :id", id=ids[2])
    report = audit.verify()
    assert (report.ok, report.broken_id, report.problem) == (False, ids[3], "deleted_or_reordered")
    assert f"entry {ids[1]}" in (report.detail or "")


def test_a_deleted_first_entry_is_detected(engine_env: Path) -> None:
    ids = append(3)
    sql("DELETE FROM hitl_audit WHERE id = :id", id=ids[0])
    report = audit.verify()
    assert (report.ok, report.broken_id, report.problem) == (False, ids[1], "deleted_or_reordered")


def test_an_entry_rewritten_with_a_fresh_hash_breaks_the_next_link(engine_env: Path) -> None:
    ids = append(3)
    with session_scope() as s:
        row = s.get_one(AuditRecord, ids[1])
        row.comment = "forged"
        row.hash = audit.entry_hash({name: getattr(row, name) for name in audit.HASHED_FIELDS})
    report = audit.verify()
    assert (report.ok, report.broken_id, report.problem) == (False, ids[2], "deleted_or_reordered")


def test_swapped_entries_are_detected(engine_env: Path) -> None:
    ids = append(4)
    # Move entry 2 after entry 3 by swapping their ids (through a free id, as the primary key is unique).
    sql("UPDATE hitl_audit SET id = 1000 WHERE id = :id", id=ids[1])
    sql("UPDATE hitl_audit SET id = :new WHERE id = :id", new=ids[1], id=ids[2])
    sql("UPDATE hitl_audit SET id = :new WHERE id = 1000", new=ids[2])
    report = audit.verify()
    assert (report.ok, report.broken_id, report.problem) == (False, ids[1], "deleted_or_reordered")


def test_truncating_the_newest_entries_only_shows_in_the_head_hash(engine_env: Path) -> None:
    """The documented limit: a chain cut at its end is still a chain; the head hash kept elsewhere tells."""
    append(4)
    anchored = audit.verify().head_hash
    newest = audit.entries()[-1].id
    sql("DELETE FROM hitl_audit WHERE id = :id", id=newest)
    report = audit.verify()
    assert report.ok
    assert report.head_hash != anchored
    cut = audit.verify(anchor=anchored)
    assert (cut.ok, cut.problem, cut.broken_id) == (False, "truncated", None)
    assert anchored in (cut.detail or "")
    append(1)
    assert not audit.verify(anchor=anchored).ok  # entries appended after the cut do not bring it back


def test_an_anchor_in_the_chain_verifies(engine_env: Path) -> None:
    append(3)
    anchored = audit.verify().head_hash
    append(2)
    assert audit.verify(anchor=anchored).ok
    assert audit.verify(anchor=audit.entries()[0].hash).ok


def test_verify_reads_in_batches(engine_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "VERIFY_BATCH", 2)
    ids = append(5)
    assert audit.verify().checked == 5
    sql("DELETE FROM hitl_audit WHERE id = :id", id=ids[2])
    report = audit.verify()
    assert (report.broken_id, report.checked) == (ids[3], 3)


def test_refused_attempts_are_written_in_their_own_transaction(engine_env: Path) -> None:
    with pytest.raises(RuntimeError), session_scope() as s:
        audit.record(s, action="decide", actor="alice", channel="cli", accepted=True, approval_id="a1")
        raise RuntimeError("the decision failed")
    audit.record_refused(
        action="decide",
        actor="alice",
        channel="http",
        reason="approval a1 was already approved",
        approval_id="a1",
        outcome="approved",
        comment="again",
    )
    [entry] = audit.entries(approval_id="a1")
    assert (entry.accepted, entry.channel, entry.reason, entry.comment) == (
        False,
        "http",
        "approval a1 was already approved",
        "again",
    )
    assert audit.verify().ok


def test_over_long_values_are_cut_to_their_column(engine_env: Path) -> None:
    long_id = "x" * 300
    audit.record_refused(
        action="decide", actor="a" * 500, channel="c" * 40, reason="no such approval", approval_id=long_id
    )
    [entry] = audit.entries()
    assert len(entry.actor) == 200 and len(entry.channel) == 16 and entry.approval_id == long_id[:32]
    assert audit.verify().ok


def test_a_runs_entries_include_those_on_its_approvals_made_before_it_took_them(engine_env: Path) -> None:
    run_id, ahead, other = new_id(), new_id(), new_id()
    with session_scope() as s:
        s.add(Run(id=run_id, workflow="gate", status=RunStatus.WAITING, payload={}))
        s.add(
            Approval(
                id=ahead,
                run_id=None,  # created ahead (lookback): no run yet
                key="k",
                status=ApprovalStatus.PENDING,
                subject={},
                assignees=[],
                deadline=utcnow(),
                continuation=[],
            )
        )
    audit.record_refused(action="decide", actor="bob", channel="cli", reason="not yet", approval_id=ahead)
    audit.record_refused(action="decide", actor="bob", channel="cli", reason="elsewhere", approval_id=other)
    with session_scope() as s:
        s.get_one(Approval, ahead).run_id = run_id
        audit.record(s, action="cancel", actor="ops", channel="cli", accepted=True, run_id=run_id)
    assert [(e.action, e.run_id) for e in audit.entries(run_id=run_id)] == [("decide", None), ("cancel", run_id)]
    assert [e.reason for e in audit.entries(approval_id=ahead)] == ["not yet"]


# ---------------------------------------------------------------- what the completion handler records


def audit_rows(approval_id: str | None = None) -> list[tuple[str, str, str, str | None, bool]]:
    return [(e.action, e.actor, e.channel, e.outcome, e.accepted) for e in audit.entries(approval_id=approval_id)]


def test_accepted_and_refused_decisions_are_recorded(engine_env: Path) -> None:
    approval_id = waiting_run()
    decide(approval_id, "approved", actor="alice", comment="ok", data={"n": 1}, channel="cli")
    with pytest.raises(AlreadyDecided):
        decide(approval_id, "rejected", actor="bob", comment="no", channel="http")
    with pytest.raises(InvalidDecision):
        decide(approval_id, "maybe", actor="carol")
    with pytest.raises(ApprovalNotFound):
        decide("missing", "approved", actor="dave", channel="inbox")
    assert audit_rows(approval_id) == [
        ("decide", "alice", "cli", "approved", True),
        ("decide", "bob", "http", "rejected", False),
        ("decide", "carol", "api", "maybe", False),
    ]
    ok, again, bad = audit.entries(approval_id=approval_id)
    assert ok.payload_hash == audit.payload_hash({"n": 1}) and ok.comment == "ok" and ok.reason is None
    assert ok.run_id == hitl.get_approval(approval_id).run_id == again.run_id
    assert again.reason == f"approval {approval_id} was already approved" and again.comment == "no"
    assert bad.reason is not None and "outcome must be" in bad.reason
    assert bad.payload_hash == again.payload_hash == audit.payload_hash({})  # no data: as an accepted one
    assert audit_rows("missing") == [("decide", "dave", "inbox", "approved", False)]
    assert audit.verify().ok


def test_a_refusal_by_refuse_is_recorded_once(engine_env: Path) -> None:
    approval_id = waiting_run()
    with session_scope() as s:
        s.get_one(Approval, approval_id).assignees = ["alice"]
    with pytest.raises(NotAllowed):
        decide(approval_id, "approved", actor="mallory", comment="let me", data={"x": 1}, channel="http")
    [entry] = audit.entries(approval_id=approval_id)
    assert (entry.actor, entry.accepted, entry.comment) == ("mallory", False, "let me")
    assert entry.payload_hash == audit.payload_hash({"x": 1})
    assert entry.reason is not None and "not among the assignees" in entry.reason
    with pytest.raises(ApprovalNotFound):
        refuse("missing", actor="mallory", channel="http", reason="no decide scope")
    assert audit_rows("missing") == [("decide", "mallory", "http", None, False)]


def test_timeouts_and_cancels_are_recorded(engine_env: Path) -> None:
    due, other = waiting_run(deadline_in=-1), waiting_run()
    assert sweep_deadlines() == 1
    assert audit_rows(due) == [("timeout", "hitl:deadline", "deadline", "timed_out", True)]
    run_id = hitl.get_approval(other).run_id
    hitl.cancel(run_id, actor="ops", reason="obsolete", channel="cli")
    with pytest.raises(InvalidTransition):
        hitl.cancel(run_id, actor="ops2")
    cancels = [e for e in audit.entries(run_id=run_id) if e.action == "cancel"]
    assert [(e.actor, e.channel, e.accepted, e.comment) for e in cancels] == [
        ("ops", "cli", True, "obsolete"),
        ("ops2", "api", False, None),
    ]
    assert cancels[1].reason is not None and "already finished" in cancels[1].reason
    assert audit.verify().ok
