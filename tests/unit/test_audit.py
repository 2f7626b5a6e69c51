"""The audit log's chains on a SQLite file: where entries go, anchors, and finding edited, deleted, moved and
cut-off entries."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import hitl
from approvals.errors import AlreadyDecided, ApprovalNotFound, InvalidDecision, InvalidTransition, NotAllowed
from approvals.models import Approval, AuditRecord, Run, utcnow
from approvals.status import ApprovalStatus, RunStatus
from approvals.transitions import CHUNK
from hitl.core import audit, audit_verify
from hitl.core.completion import decide, refuse
from hitl.core.deadlines import sweep as sweep_deadlines
from hitl.infra.db import session_scope
from hitl.infra.ids import new_id
from tests.unit.test_completion import waiting_run
from tests.unit.test_query_plans import explained, recorded


def new_run(run_id: str | None = None) -> str:
    run_id = run_id or new_id()
    with session_scope() as s:
        s.add(Run(id=run_id, workflow="gate", status=RunStatus.WAITING, payload={}))
    return run_id


def ahead_approval(approval_id: str | None = None, run_id: str | None = None) -> str:
    """Insert an approval created ahead (no run has taken it, unless ``run_id``); return its id."""
    approval_id = approval_id or new_id()
    with session_scope() as s:
        s.add(
            Approval(
                id=approval_id,
                run_id=run_id,
                key="k",
                status=ApprovalStatus.PENDING,
                subject={},
                assignees=[],
                deadline=utcnow(),
                continuation=[],
            )
        )
    return approval_id


def append(n: int, run_id: str | None = None) -> list[int]:
    """Append ``n`` accepted decisions by user0, user1, ... to the chain of ``run_id`` (a new run by default)."""
    run_id = run_id or new_run()
    ids = []
    for i in range(n):
        with session_scope() as s:
            entry_id = audit.record(
                s,
                action="decide",
                actor=f"user{i}",
                channel="cli",
                accepted=True,
                run_id=run_id,
                outcome="approved",
                comment=f"comment {i}",
                payload={"i": i},
            )
            ids.append(entry_id)
    return ids


def chain_of(entry_id: int) -> str:
    [entry] = [e for e in audit.entries() if e.id == entry_id]
    return entry.chain


def sql(statement: str, **params: object) -> None:
    with session_scope() as s:
        s.execute(text(statement), params)


def broken(report: audit.AuditReport) -> tuple[bool, int | None, str | None, str | None]:
    return report.ok, report.broken_id, report.problem, report.chain


# ---------------------------------------------------------------- chains


def test_each_run_has_its_own_chain_from_genesis(engine_env: Path) -> None:
    run_a, run_b = new_run(), new_run()
    a1, b1, a2, b2, a3 = (append(1, r)[0] for r in (run_a, run_b, run_a, run_b, run_a))
    a, b = audit.entries(chain=run_a), audit.entries(chain=run_b)
    assert [e.id for e in a] == [a1, a2, a3] and [e.id for e in b] == [b1, b2]
    assert a[0].prev_hash == b[0].prev_hash == audit.GENESIS
    assert [e.prev_hash for e in a[1:]] == [e.hash for e in a[:-1]]
    assert [e.prev_hash for e in b[1:]] == [e.hash for e in b[:-1]]
    assert a[1].payload_hash == audit.payload_hash({"i": 0})
    report = audit.verify()
    assert (report.ok, report.checked, report.chains) == (True, 5, 2)
    assert report.head_hash is None  # no anchor yet


def test_an_entry_goes_to_its_runs_chain_else_its_approvals_else_the_stray_chain(engine_env: Path) -> None:
    run_id = new_run()
    ahead_approval("of-run", run_id=run_id)  # an approval the run has taken
    ahead = ahead_approval()
    refused = {"action": "decide", "actor": "bob", "channel": "cli", "reason": "no"}
    audit.record_refused(**refused, approval_id="of-run")  # no run_id given: looked up
    audit.record_refused(**refused, approval_id=ahead)
    audit.record_refused(**refused, approval_id="missing")
    audit.record_refused(**refused, run_id="no-such-run")
    audit.record_refused(**refused)
    with session_scope() as s:  # a run takes the approval created ahead: what follows goes to the run's chain
        s.get_one(Approval, ahead).run_id = run_id
    audit.record_refused(**refused, approval_id=ahead)
    every = audit.entries()
    assert [(e.chain, e.approval_id, e.run_id) for e in every] == [
        (run_id, "of-run", run_id),
        (f"approval:{ahead}", ahead, None),
        ("-", "missing", None),
        ("-", None, "no-such-run"),
        ("-", None, None),
        (run_id, ahead, run_id),
    ]
    assert [e.id for e in audit.entries(run_id=run_id)] == [every[0].id, every[1].id, every[5].id]
    assert audit.verify().ok


def test_record_many_places_each_entry_in_its_chain_in_order(engine_env: Path) -> None:
    run_a, run_b = new_run(), new_run()
    [first] = append(1, run_a)
    ahead = ahead_approval()
    with session_scope() as s:
        audit.record_many(
            s,
            [
                audit.entry_fields(
                    action="timeout",
                    actor="hitl:deadline",
                    channel="deadline",
                    accepted=True,
                    approval_id=approval_id,
                    run_id=run_id,
                    outcome="timed_out",
                    payload={"n": n},
                )
                for n, (run_id, approval_id) in enumerate(
                    [(run_a, None), (run_b, None), (run_a, None), (None, ahead), ("nope", None)]
                )
            ],
        )
    a = audit.entries(chain=run_a)
    assert a[0].id == first and len(a) == 3
    assert [e.prev_hash for e in a[1:]] == [e.hash for e in a[:-1]]  # onto the head, then onto each other
    assert [e.payload_hash for e in a[1:]] == [audit.payload_hash({"n": 0}), audit.payload_hash({"n": 2})]
    [b] = audit.entries(chain=run_b)
    assert b.prev_hash == audit.GENESIS
    assert [e.approval_id for e in audit.entries(chain=f"approval:{ahead}")] == [ahead]
    assert [e.run_id for e in audit.entries(chain="-")] == ["nope"]
    report = audit.verify()
    assert (report.ok, report.checked, report.chains) == (True, 6, 4)
    sql("UPDATE hitl_audit SET actor = 'mallory' WHERE id = :id", id=a[1].id)
    assert broken(audit.verify()) == (False, a[1].id, "edited", run_a)


def test_record_many_places_and_chains_thousands_in_a_few_statements(engine_env: Path) -> None:
    n = CHUNK * 2 + 10
    runs = [new_id() for _ in range(n)]
    with session_scope() as s:
        s.add_all(Run(id=r, workflow="gate", status=RunStatus.WAITING, payload={}) for r in runs)
    append(1, runs[0])
    fields = [
        audit.entry_fields(action="timeout", actor="d", channel="deadline", accepted=True, approval_id=None, run_id=r)
        for r in runs
    ]
    with recorded() as statements, session_scope() as s:
        audit.record_many(s, fields)
    reads = [q for q, _ in statements if q.startswith("SELECT")]
    assert len(reads) == 6, reads  # 3 chunks of runs locked, 3 chunks of heads: not one per entry
    assert len(audit.entries(chain=runs[0])) == 2
    report = audit.verify()
    assert (report.ok, report.checked, report.chains) == (True, n + 1, n)


def test_a_chains_head_and_the_heads_of_many_are_read_on_the_chain_index(engine_env: Path) -> None:
    run_a, run_b = new_run(), new_run()
    append(2, run_a)
    with recorded() as statements:
        append(1, run_a)
        with session_scope() as s:
            audit.record_many(
                s,
                [
                    audit.entry_fields(action="t", actor="d", channel="c", accepted=True, approval_id=None, run_id=r)
                    for r in (run_a, run_b)
                ],
            )
    plans = explained(statements, re.compile(r"FROM hitl_audit\s+WHERE hitl_audit\.chain"))
    assert len(plans) == 2, plans
    for sql_text, plan in plans.items():
        assert any("ix_hitl_audit_chain_id (chain=?)" in step for step in plan), f"{sql_text}: {plan}"


def test_hash_covers_every_field_and_the_chain(engine_env: Path) -> None:
    [entry_id] = append(1)
    with session_scope() as s:
        row = s.get_one(AuditRecord, entry_id)
        fields = {name: getattr(row, name) for name in audit.HASHED_FIELDS}
    assert audit.entry_hash(fields) == row.hash
    for name, other in [
        ("actor", "mallory"),
        ("accepted", False),
        ("comment", None),
        ("prev_hash", "1" * 64),
        ("chain", "other"),
    ]:
        assert audit.entry_hash({**fields, name: other}) != row.hash, name


def legacy_hash(fields: dict[str, Any]) -> str:
    """The hash as the code before migration 0005 computed it: every field but ``chain``."""
    values = {k: v for k, v in fields.items() if k not in ("chain", "hash")}
    values["at"] = values["at"].isoformat(timespec="microseconds")
    return hashlib.sha256(audit.canonical_json(values)).hexdigest()


def test_legacy_entries_keep_their_hashes_and_are_checked_as_one_chain(engine_env: Path) -> None:
    prev, rows = audit.GENESIS, []
    for i in range(3):  # one chain over the whole log, as before migration 0005
        fields = audit.entry_fields(
            action="decide", actor=f"u{i}", channel="cli", accepted=True, approval_id=None, run_id=f"r{i}"
        )
        row = {**fields, "prev_hash": prev}
        row["hash"] = prev = legacy_hash(row)
        rows.append({**row, "id": 100 + i, "chain": "legacy"})
    with session_scope() as s:
        s.add_all(AuditRecord(**row) for row in rows)
    assert audit.entry_hash(rows[1]) == rows[1]["hash"]
    append(1)
    report = audit.verify()
    assert (report.ok, report.checked, report.chains) == (True, 4, 2)
    assert audit.verify(anchor=rows[-1]["hash"]).ok  # a head printed before the migration is still an anchor
    sql("UPDATE hitl_audit SET comment = 'changed' WHERE id = 101")
    assert broken(audit.verify()) == (False, 101, "edited", "legacy")
    sql("UPDATE hitl_audit SET comment = NULL WHERE id = 101")
    assert audit.verify().ok
    sql("UPDATE hitl_audit SET chain = 'r2', prev_hash = :g WHERE id = 102", g=audit.GENESIS)  # out of legacy
    assert broken(audit.verify()) == (False, 102, "edited", "r2")  # its hash, without the chain, no longer fits


@pytest.mark.parametrize(
    ("column", "value"),
    [("comment", "changed"), ("actor", "mallory"), ("accepted", False), ("outcome", "rejected"), ("reason", "x")],
)
def test_an_edited_entry_is_named_with_its_chain(engine_env: Path, column: str, value: object) -> None:
    append(2)
    run_id = new_run()
    ids = append(4, run_id)
    sql(f"UPDATE hitl_audit SET {column} = :v WHERE id = :id", v=value, id=ids[1])
    report = audit.verify()
    assert broken(report) == (False, ids[1], "edited", run_id)
    assert report.head_id == ids[0]
    assert f"entry {ids[1]} (chain {run_id})" in (report.detail or "")


def test_an_edited_time_is_detected(engine_env: Path) -> None:
    ids = append(2)
    with session_scope() as s:
        row = s.get_one(AuditRecord, ids[0])
        row.at = row.at.replace(microsecond=(row.at.microsecond + 1) % 1_000_000)
    assert broken(audit.verify())[:3] == (False, ids[0], "edited")


def test_an_entry_moved_to_another_chain_is_detected(engine_env: Path) -> None:
    other = new_run()
    append(2, other)
    ids = append(3)
    sql("UPDATE hitl_audit SET chain = :c WHERE id = :id", c=other, id=ids[2])  # after the other's entries
    assert broken(audit.verify()) == (False, ids[2], "deleted_or_reordered", other)
    first = audit.entries(chain=other)[0]
    sql("UPDATE hitl_audit SET chain = :c, prev_hash = :h WHERE id = :id", c=other, h=first.hash, id=ids[2])
    sql("DELETE FROM hitl_audit WHERE chain = :c AND id > :id AND id != :moved", c=other, id=first.id, moved=ids[2])
    assert broken(audit.verify()) == (False, ids[2], "edited", other)  # it links, but its hash covers its chain


def test_a_deleted_middle_entry_breaks_the_next_link_in_its_chain(engine_env: Path) -> None:
    run_id, other = new_run(), new_run()
    ids = [append(1, r)[0] for r in (run_id, other, run_id, other, run_id, run_id)]
    mine = [ids[0], ids[2], ids[4], ids[5]]
    sql("DELETE FROM hitl_audit WHERE id = :id", id=mine[1])
    report = audit.verify()
    assert broken(report) == (False, mine[2], "deleted_or_reordered", run_id)
    assert f"the hash of entry {mine[0]}" in (report.detail or "")  # the one before in the chain, not in the log


def test_a_deleted_first_entry_is_detected(engine_env: Path) -> None:
    run_id = new_run()
    ids = append(3, run_id)
    sql("DELETE FROM hitl_audit WHERE id = :id", id=ids[0])
    report = audit.verify()
    assert broken(report) == (False, ids[1], "deleted_or_reordered", run_id)
    assert f"the start of chain {run_id}" in (report.detail or "")


def test_an_entry_rewritten_with_a_fresh_hash_breaks_the_next_link(engine_env: Path) -> None:
    ids = append(3)
    with session_scope() as s:
        row = s.get_one(AuditRecord, ids[1])
        row.comment = "forged"
        row.hash = audit.entry_hash({name: getattr(row, name) for name in audit.HASHED_FIELDS})
    assert broken(audit.verify())[:3] == (False, ids[2], "deleted_or_reordered")


def test_swapped_entries_are_detected(engine_env: Path) -> None:
    ids = append(4)
    # Move entry 2 after entry 3 by swapping their ids (through a free id, as the primary key is unique).
    sql("UPDATE hitl_audit SET id = 1000 WHERE id = :id", id=ids[1])
    sql("UPDATE hitl_audit SET id = :new WHERE id = :id", new=ids[1], id=ids[2])
    sql("UPDATE hitl_audit SET id = :new WHERE id = 1000", new=ids[2])
    assert broken(audit.verify())[:3] == (False, ids[1], "deleted_or_reordered")


# ---------------------------------------------------------------- anchors


def anchored_heads() -> list[list[dict[str, Any]]]:
    """The heads each anchor names, oldest anchor first."""
    return [
        [{"chain": c, "id": i} for c, i, _ in json.loads(e.comment or "")["heads"]]
        for e in audit.entries(chain="anchor")
    ]


def test_an_anchor_names_the_head_of_every_chain_that_changed_since_the_previous_one(engine_env: Path) -> None:
    assert audit.anchor() is None  # an empty log: nothing to anchor
    run_a, run_b = new_run(), new_run()
    a = append(2, run_a)
    b = append(1, run_b)
    first = audit.anchor()
    assert first is not None and audit.anchor() is None  # nothing changed since
    [entry] = audit.entries(chain="anchor")
    assert (entry.id, entry.actor, entry.action, entry.prev_hash) == (first, "hitl:anchor", "anchor", audit.GENESIS)
    a += append(1, run_a)
    assert audit.anchor() is not None
    assert anchored_heads() == [
        sorted([{"chain": run_a, "id": a[1]}, {"chain": run_b, "id": b[0]}], key=lambda h: h["chain"]),
        [{"chain": run_a, "id": a[2]}],
    ]
    anchors = audit.entries(chain="anchor")
    assert anchors[1].prev_hash == anchors[0].hash
    assert anchors[1].payload_hash == audit.payload_hash(json.loads(anchors[1].comment or ""))
    report = audit.verify()
    assert (report.ok, report.chains, report.head_id, report.head_hash) == (True, 3, anchors[1].id, anchors[1].hash)


def test_an_entry_that_commits_after_an_anchor_read_with_a_lower_id_is_named_by_the_next(engine_env: Path) -> None:
    """On PostgreSQL an entry becomes visible at commit, possibly after an anchor read larger ids."""
    run_a, late, run_b = new_run(), new_run(), new_run()
    append(1, run_a)
    [in_flight] = append(1, late)
    append(1, run_b)
    [row] = [e for e in audit.entries() if e.id == in_flight]
    sql("DELETE FROM hitl_audit WHERE id = :id", id=in_flight)  # not visible yet when the anchor reads
    audit.anchor()
    with session_scope() as s:
        s.add(AuditRecord(**row.model_dump()))  # now it commits, below the anchor's largest id
    assert audit.anchor() is not None
    assert anchored_heads()[-1] == [{"chain": late, "id": in_flight}]
    sql("DELETE FROM hitl_audit WHERE id = :id", id=in_flight)
    assert broken(audit.verify()) == (False, in_flight, "truncated", late)


def test_a_chain_cut_before_its_last_anchor_is_truncated(engine_env: Path) -> None:
    run_id = new_run()
    ids = append(4, run_id)
    append(2)
    audit.anchor()
    assert audit.verify().ok
    sql("DELETE FROM hitl_audit WHERE id >= :id AND chain = :c", id=ids[2], c=run_id)  # its two newest entries
    report = audit.verify()
    assert broken(report) == (False, ids[3], "truncated", run_id)
    assert (report.head_id, report.head_hash) == (ids[1], audit.entries(chain=run_id)[-1].hash)
    assert f"entry {ids[3]}, the head of chain {run_id}" in (report.detail or "")
    assert f"ends at entry {ids[1]}" in (report.detail or "")
    sql("DELETE FROM hitl_audit WHERE chain = :c", c=run_id)  # the whole chain
    assert broken(audit.verify()) == (False, ids[3], "truncated", run_id)


def test_a_heads_rewrite_with_a_fresh_hash_before_the_anchor_is_edited(engine_env: Path) -> None:
    run_id = new_run()
    ids = append(2, run_id)
    audit.anchor()
    with session_scope() as s:  # the newest entry, rewritten consistently: its chain alone still verifies
        row = s.get_one(AuditRecord, ids[1])
        row.comment = "forged"
        row.hash = audit.entry_hash({name: getattr(row, name) for name in audit.HASHED_FIELDS})
    report = audit.verify()
    assert broken(report) == (False, ids[1], "edited", run_id)
    assert "anchor entry" in (report.detail or "")


def test_entries_after_the_last_anchor_can_be_cut_unseen(engine_env: Path) -> None:
    """The documented limit: what no anchor names yet is protected by its chain alone."""
    run_id = new_run()
    ids = append(2, run_id)
    audit.anchor()
    newest = append(1, run_id)[0]
    sql("DELETE FROM hitl_audit WHERE id = :id", id=newest)
    assert audit.verify().ok
    assert [e.id for e in audit.entries(chain=run_id)] == ids


def test_cutting_the_newest_anchors_only_shows_with_a_kept_head_hash(engine_env: Path) -> None:
    run_id = new_run()
    append(2, run_id)
    audit.anchor()
    append(1, run_id)
    audit.anchor()
    kept = audit.verify().head_hash
    newest = audit.entries(chain="anchor")[-1]
    assert kept == newest.hash
    sql("DELETE FROM hitl_audit WHERE id = :id", id=newest.id)
    report = audit.verify()
    assert report.ok and report.head_hash != kept  # the anchor chain cut at its end is still a chain
    cut = audit.verify(anchor=kept)
    assert (cut.ok, cut.problem, cut.broken_id, cut.chain) == (False, "truncated", None, "anchor")
    assert kept in (cut.detail or "")
    append(1, run_id)
    audit.anchor()
    assert not audit.verify(anchor=kept).ok  # anchors appended after the cut do not bring it back


def test_an_anchor_hash_still_in_the_log_verifies(engine_env: Path) -> None:
    ids = append(3)
    audit.anchor()
    kept = audit.verify().head_hash
    append(2)
    audit.anchor()
    assert kept is not None and audit.verify(anchor=kept).ok
    assert audit.verify(anchor=audit.entries(chain=audit.entries()[0].chain)[0].hash).ok
    assert len(ids) == 3


def test_a_forged_anchor_without_a_readable_payload_is_reported(engine_env: Path) -> None:
    append(1)
    anchor_id = audit.anchor()
    with session_scope() as s:
        row = s.get_one(AuditRecord, anchor_id)
        row.comment = "not json"
        row.hash = audit.entry_hash({name: getattr(row, name) for name in audit.HASHED_FIELDS})
    assert broken(audit.verify()) == (False, anchor_id, "edited", "anchor")
    append(1)
    assert audit.anchor() is not None  # the next anchor names every chain again


def test_verify_reads_in_batches(engine_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_verify, "VERIFY_BATCH", 2)
    monkeypatch.setattr(audit_verify, "ANCHOR_BATCH", 1)
    run_a, run_b = new_run("r-a"), new_run("r-b")  # walked in this order, after chain "anchor"
    a = append(3, run_a)
    b: list[int] = []
    for _ in range(3):
        b += append(1, run_b)
        audit.anchor()
    report = audit.verify()
    assert (report.ok, report.checked, report.chains) == (True, 3 + 3 + 3, 3)
    [middle] = [e for e in audit.entries() if e.id == a[1]]
    sql("DELETE FROM hitl_audit WHERE id = :id", id=a[1])  # across a batch boundary: 3 anchors, then a[0]
    report = audit.verify()
    assert broken(report) == (False, a[2], "deleted_or_reordered", run_a) and report.checked == 5
    with session_scope() as s:
        s.add(AuditRecord(**middle.model_dump()))
    sql("DELETE FROM hitl_audit WHERE id = :id", id=b[-1])  # named by the newest anchor only: the third batch
    assert broken(audit.verify()) == (False, b[-1], "truncated", run_b)


def test_the_anchor_job_is_on_beat_every_interval(engine_env: Path) -> None:
    from hitl.worker.jobs import anchor_audit

    show = "from hitl.infra import celeryconfig; print(celeryconfig.beat_schedule['hitl-anchor-audit'])"
    env = {**os.environ, "HITL_AUDIT_ANCHOR_INTERVAL": "5"}
    res = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == str({"task": "hitl.anchor_audit", "schedule": 5.0, "options": {"expires": 60.0}})
    append(1)
    entry_id = anchor_audit()
    assert entry_id is not None and entry_id == audit.entries(chain="anchor")[-1].id
    assert anchor_audit() is None


# ---------------------------------------------------------------- appending


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
    assert (entry.accepted, entry.channel, entry.reason, entry.comment, entry.chain) == (
        False,
        "http",
        "approval a1 was already approved",
        "again",
        "-",
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
    run_id, other = new_run(), new_id()
    ahead = ahead_approval()
    audit.record_refused(action="decide", actor="bob", channel="cli", reason="not yet", approval_id=ahead)
    audit.record_refused(action="decide", actor="bob", channel="cli", reason="elsewhere", approval_id=other)
    with session_scope() as s:
        s.get_one(Approval, ahead).run_id = run_id
        audit.record(s, action="cancel", actor="ops", channel="cli", accepted=True, run_id=run_id)
    assert [(e.action, e.run_id, e.chain) for e in audit.entries(run_id=run_id)] == [
        ("decide", None, f"approval:{ahead}"),
        ("cancel", run_id, run_id),
    ]
    assert [e.reason for e in audit.entries(approval_id=ahead)] == ["not yet"]


# ---------------------------------------------------------------- what the completion handler records


def audit_rows(approval_id: str | None = None) -> list[tuple[str, str, str, str | None, bool]]:
    return [(e.action, e.actor, e.channel, e.outcome, e.accepted) for e in audit.entries(approval_id=approval_id)]


def test_accepted_and_refused_decisions_are_recorded_in_the_runs_chain(engine_env: Path) -> None:
    approval_id = waiting_run()
    run_id = hitl.get_approval(approval_id).run_id
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
    assert ok.run_id == run_id == again.run_id and ok.chain == again.chain == bad.chain == run_id
    assert again.prev_hash == ok.hash and bad.prev_hash == again.hash
    assert again.reason == f"approval {approval_id} was already approved" and again.comment == "no"
    assert bad.reason is not None and "outcome must be" in bad.reason
    assert bad.payload_hash == again.payload_hash == audit.payload_hash({})  # no data: as an accepted one
    assert audit_rows("missing") == [("decide", "dave", "inbox", "approved", False)]
    assert audit.entries(approval_id="missing")[0].chain == "-"
    assert audit.verify().ok


def test_a_decision_on_an_approval_created_ahead_goes_to_the_approvals_chain(engine_env: Path) -> None:
    approval = hitl.create_approval("k", idempotency_key="ahead-1")
    decide(approval.id, "approved", actor="alice")
    [entry] = audit.entries(approval_id=approval.id)
    assert (entry.chain, entry.run_id, entry.accepted) == (f"approval:{approval.id}", None, True)
    assert audit.verify().ok


def test_a_refusal_by_refuse_is_recorded_once(engine_env: Path) -> None:
    approval_id = waiting_run()
    with session_scope() as s:
        s.get_one(Approval, approval_id).assignees = ["alice"]
    with pytest.raises(NotAllowed):
        decide(approval_id, "approved", actor="mallory", comment="let me", data={"x": 1}, channel="http")
    [entry] = audit.entries(approval_id=approval_id)
    assert (entry.actor, entry.accepted, entry.comment) == ("mallory", False, "let me")
    assert entry.chain == hitl.get_approval(approval_id).run_id
    assert entry.payload_hash == audit.payload_hash({"x": 1})
    assert entry.reason is not None and "not among the assignees" in entry.reason
    with pytest.raises(ApprovalNotFound):
        refuse("missing", actor="mallory", channel="http", reason="no decide scope")
    assert audit_rows("missing") == [("decide", "mallory", "http", None, False)]


def test_timeouts_and_cancels_are_recorded(engine_env: Path) -> None:
    due, other = waiting_run(deadline_in=-1), waiting_run()
    assert sweep_deadlines() == 1
    assert audit_rows(due) == [("timeout", "hitl:deadline", "deadline", "timed_out", True)]
    assert audit.entries(approval_id=due)[0].chain == hitl.get_approval(due).run_id
    run_id = hitl.get_approval(other).run_id
    assert run_id is not None
    hitl.cancel(run_id, actor="ops", reason="obsolete", channel="cli")
    with pytest.raises(InvalidTransition):
        hitl.cancel(run_id, actor="ops2")
    cancels = [e for e in audit.entries(run_id=run_id) if e.action == "cancel"]
    assert [(e.actor, e.channel, e.accepted, e.comment, e.chain) for e in cancels] == [
        ("ops", "cli", True, "obsolete", run_id),
        ("ops2", "api", False, None, run_id),
    ]
    assert cancels[1].reason is not None and "already finished" in cancels[1].reason
    assert audit.verify().ok
