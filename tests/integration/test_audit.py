"""The audit log against real processes (worker, beat, ``hitl serve``, the CLI) on SQLite and PostgreSQL, and
its locks on PostgreSQL in-process.

Every channel's decisions and refused attempts land in their run's hash chain; ``hitl audit verify`` finds an
edited, deleted or cut-off entry; concurrent deciders never fork a chain; on PostgreSQL a decision never waits
for another run's, and a deadline sweep's 10,000 entries take no lock-table slot each.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, table, text
from sqlalchemy.sql import column

import hitl
from approvals.errors import AlreadyDecided
from approvals.models import Approval, AuditRecord, utcnow
from approvals.status import ApprovalStatus
from hitl.core import audit
from hitl.core.deadlines import sweep as sweep_deadlines
from hitl.infra.db import read_session, session_scope
from hitl.infra.ids import new_id
from hitl.infra.migrate import upgrade
from tests.conftest import DATABASES
from tests.integration.test_bulk_sweep import insert_waiting
from tests.pg import PgServer
from tests.support import ApiServer, Stack, point_process_at, start_gate, wait_for
from tests.unit.test_audit import legacy_hash, new_run
from tests.unit.test_completion import waiting_run

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
    assert first[0]["chain"] == first[1]["chain"] == run_a and first[1]["prev_hash"] == first[0]["hash"]
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
    assert first[1]["hash"][:12] in table.out and "already approved" in table.out and run_a in table.out
    audit.anchor()  # as beat does every HITL_AUDIT_ANCHOR_INTERVAL s
    code, report = verify(stack)
    assert code == 0 and report["ok"] is True and report["chains"] >= 4  # 3 runs and the anchors
    assert report["head_hash"] == audit.entries(chain="anchor")[-1].hash
    text_report = stack.cli("audit", "verify")
    assert text_report.code == 0 and report["head_hash"] in text_report.out


def test_timeouts_cancels_and_decisions_after_them_are_recorded(stack: Stack) -> None:
    timed_out = hitl.start("gate", {"timeout": "1s"})
    due = wait_for(lambda: hitl.list_approvals(run_id=timed_out), what="the run's approval")[0]
    wait_for(lambda: audit_of(stack, timed_out), timeout=30, what="the sweep to time the approval out")
    assert rows(audit_of(stack, timed_out)) == [("timeout", "hitl:deadline", "deadline", "timed_out", True)]
    assert audit_of(stack, timed_out)[0]["chain"] == timed_out
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
    assert entries[0]["comment"] == "obsolete" and {e["chain"] for e in entries} == {cancelled}
    assert "cancelled" in entries[1]["reason"] and "already finished" in entries[2]["reason"]
    [missing] = audit.entries(approval_id="no-such-approval")
    assert (missing.actor, missing.accepted, missing.chain) == ("mallory", False, "-")
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


def test_concurrent_deciders_never_fork_a_chain(stack: Stack) -> None:
    concurrent_decisions(stack, racers=10)
    code, report = verify(stack)
    assert code == 0 and report["ok"], report
    chains: dict[str, list[str]] = defaultdict(list)
    for entry in audit.entries():
        chains[entry.chain].append(entry.prev_hash)
    for chain, links in chains.items():
        assert len(set(links)) == len(links), chain  # no two entries of a chain chained onto the same one
    assert max(len(links) for chain, links in chains.items() if chain != "anchor") >= 10  # the racers' run


def test_verify_names_an_edited_a_deleted_and_a_cut_off_entry(stack: Stack) -> None:
    run_id = hitl.start("gate", {})
    approval = wait_for(lambda: hitl.list_approvals(run_id=run_id), what="the run's approval")[0]
    assert stack.cli("approve", approval.id, "--by", "alice", "--comment", "fine").code == 0
    for late in ("bob", "carol"):
        assert stack.cli("reject", approval.id, "--by", late, "--reason", "late").code == 1
    chain = audit.entries(chain=run_id)
    assert [e.actor for e in chain] == ["alice", "bob", "carol"]
    before, middle, after = chain
    assert verify(stack)[0] == 0

    with session_scope() as s:
        s.execute(text("UPDATE hitl_audit SET comment = 'not fine' WHERE id = :id"), {"id": before.id})
    code, report = verify(stack)
    assert code == 1
    assert (report["ok"], report["broken_id"], report["problem"], report["chain"]) == (
        False,
        before.id,
        "edited",
        run_id,
    )
    shown = stack.cli("audit", "verify")
    assert shown.code == 1 and f"entry {before.id} of chain {run_id} (edited)" in shown.out
    assert "Traceback" not in shown.out + shown.err
    with session_scope() as s:
        s.execute(text("UPDATE hitl_audit SET comment = 'fine' WHERE id = :id"), {"id": before.id})
    assert verify(stack)[0] == 0  # restored as it was: intact again

    with session_scope() as s:
        s.execute(text("DELETE FROM hitl_audit WHERE id = :id"), {"id": middle.id})
    code, report = verify(stack)
    assert code == 1
    assert (report["broken_id"], report["problem"], report["chain"]) == (after.id, "deleted_or_reordered", run_id)
    assert f"hash of entry {before.id}" in report["detail"]
    with session_scope() as s:
        s.add(AuditRecord(**middle.model_dump()))
    assert verify(stack)[0] == 0

    # The run's newest entry, removed after an anchor named it as the chain's head: truncated.
    audit.anchor()
    with session_scope() as s:
        s.execute(text("DELETE FROM hitl_audit WHERE id = :id"), {"id": after.id})
    code, report = verify(stack)
    assert code == 1
    assert (report["broken_id"], report["problem"], report["chain"]) == (after.id, "truncated", run_id)
    assert (report["head_id"], report["head_hash"]) == (middle.id, middle.hash)
    shown = stack.cli("audit", "verify")
    assert shown.code == 1 and "(truncated)" in shown.out and "Traceback" not in shown.out + shown.err
    with session_scope() as s:
        s.add(AuditRecord(**after.model_dump()))
    code, report = verify(stack)
    assert code == 0

    # The anchor chain's head, kept elsewhere, must still be there.
    assert stack.cli("audit", "verify", "--anchor", report["head_hash"]).code == 0
    cut = stack.cli("audit", "verify", "--anchor", "f" * 64)
    assert cut.code == 1 and "truncated" in cut.out and "Traceback" not in cut.out + cut.err


# ---------------------------------------------------------------- in-process, on PostgreSQL: the chains' locks


@contextmanager
def pointed_at(url: str, home: Path) -> Iterator[None]:
    """Point this process at ``url`` (no worker: the memory broker), then back at what it used before."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("HITL_")}
    point_process_at(
        {
            "HITL_HOME": str(home),
            "HITL_DATABASE_URL": url,
            "HITL_BROKER_URL": "memory://",
            "HITL_WORKFLOW_MODULES": '["tasks", "tests.flows"]',
        }
    )
    try:
        yield
    finally:
        point_process_at(saved)


@pytest.fixture
def on_postgres(postgres: PgServer, tmp_path: Path) -> Iterator[None]:
    with pointed_at(postgres.create_database(), tmp_path):
        yield


def waiting_on_a_lock() -> int:
    """How many sessions of this database wait for a lock (a row or an advisory lock) right now."""
    with read_session() as s:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        return int(s.scalar(text(query)) or 0)


def test_a_decision_does_not_wait_for_another_runs_open_decision(
    on_postgres: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    held_open, release = threading.Event(), threading.Event()
    a, b = waiting_run(), waiting_run()
    record = audit.record

    def record_and_hold(session: Any, **fields: Any) -> int:
        entry_id = record(session, **fields)
        if fields.get("approval_id") == a:  # run A's decision: its transaction stays open, all its locks held
            held_open.set()
            release.wait(60)
        return entry_id

    monkeypatch.setattr(audit, "record", record_and_hold)
    failures: list[BaseException] = []
    decided_b = threading.Event()

    def decide(approval_id: str, done: threading.Event | None = None) -> None:
        try:
            hitl.decide(approval_id, "approved", actor="alice")
        except BaseException as exc:
            failures.append(exc)
        if done is not None:
            done.set()

    deciders = [threading.Thread(target=decide, args=(a,)), threading.Thread(target=decide, args=(b, decided_b))]
    deciders[0].start()
    try:
        assert held_open.wait(30), "run A's decision did not reach its audit entry"
        deciders[1].start()
        # With one lock for the whole log (before migration 0005) run B's decision waited here until A's commit.
        assert decided_b.wait(20), "the decision on run B waited for run A's open decision"
        assert hitl.get_approval(b).status.value == "approved"
        assert hitl.get_approval(a).status.value == "pending"  # A's transaction is still open
    finally:
        release.set()
        for t in deciders:
            t.join(60)
    assert not failures, failures
    for approval_id in (a, b):
        [entry] = audit.entries(approval_id=approval_id)
        assert (entry.chain, entry.prev_hash) == (hitl.get_approval(approval_id).run_id, audit.GENESIS)
    assert audit.verify().ok


def test_an_append_waits_for_the_open_append_to_its_chain_and_chains_onto_it(on_postgres: None) -> None:
    run_id = new_run()
    second: dict[str, int] = {}

    def append() -> None:
        with session_scope() as s:
            second["id"] = audit.record(s, action="decide", actor="bob", channel="cli", accepted=False, run_id=run_id)

    appender = threading.Thread(target=append)
    with session_scope() as s:
        first = audit.record(s, action="decide", actor="alice", channel="cli", accepted=True, run_id=run_id)
        appender.start()
        wait_for(waiting_on_a_lock, what="the second append to wait for the chain's lock")
        assert "id" not in second
    appender.join(30)
    one, two = audit.entries(chain=run_id)
    assert (one.id, two.id) == (first, second["id"]) and two.prev_hash == one.hash
    assert audit.verify().ok


def test_concurrent_appends_to_one_runs_chain_never_share_a_predecessor(on_postgres: None) -> None:
    """Two approvals of one run (parallel waits), decided and refused from many threads at once."""
    first = waiting_run()
    run_id = hitl.get_approval(first).run_id
    assert run_id is not None
    second = _second_approval(run_id)
    threads, rounds = 8, 5
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def append(i: int) -> None:
        barrier.wait()
        try:
            for n in range(rounds):
                if (i + n) % 3 == 0:
                    with session_scope() as s:
                        audit.record(s, action="cancel", actor=f"t{i}", channel="cli", accepted=False, run_id=run_id)
                else:  # looked up from the approval: locks it, then the run
                    approval_id = (first, second)[(i + n) % 2]
                    audit.record_refused(
                        action="decide", actor=f"t{i}", channel="cli", reason="no", approval_id=approval_id
                    )
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=append, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert not failures, failures
    chain = audit.entries(chain=run_id)
    assert len(chain) == threads * rounds
    assert len({e.prev_hash for e in chain}) == len(chain)
    assert [e.prev_hash for e in chain] == [audit.GENESIS] + [e.hash for e in chain[:-1]]
    assert audit.verify().ok


def test_an_append_on_postgresql_is_one_statement_and_hashes_as_entry_hash_does(on_postgres: None) -> None:
    """The server computes the hash (``sha256`` around the head it reads): it must equal :func:`entry_hash` for
    any text, including quotes, backslashes, non-ASCII, a comment that spells the ``prev_hash`` key, and NULLs."""
    from sqlalchemy import event

    from hitl.infra.db import get_engine

    run_id = new_run()
    comments = [None, 'say "yes"\\', "Grüße 日本 \u2028 emoji 🎉", '"prev_hash":"' + audit.GENESIS + '"', ""]
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(get_engine(), "before_cursor_execute", count)
    try:
        for i, comment in enumerate(comments):
            with session_scope() as s:
                s.execute(text("SELECT 1"))  # the transaction has begun: what follows is record's alone
                statements.clear()
                audit.record(
                    s,
                    action="decide",
                    actor=f"ä{i}",
                    channel="cli",
                    accepted=bool(i % 2),
                    run_id=run_id,
                    comment=comment,
                    reason=None if i % 2 else "no",
                    payload={"n": i, "note": comment},
                )
                assert len(statements) == 2, statements  # the run's lock, then the head read and INSERT in one
    finally:
        event.remove(get_engine(), "before_cursor_execute", count)
    chain = audit.entries(chain=run_id)
    assert [e.comment for e in chain] == comments
    assert [e.prev_hash for e in chain] == [audit.GENESIS] + [e.hash for e in chain[:-1]]
    for e in chain:
        assert e.hash == audit.entry_hash(e.model_dump())
    assert audit.verify().ok


def _second_approval(run_id: str) -> str:
    """Add a second pending approval to ``run_id`` (as a parallel wait will)."""
    approval_id = new_id()
    with session_scope() as s:
        s.add(
            Approval(
                id=approval_id,
                run_id=run_id,
                key="second",
                status=ApprovalStatus.PENDING,
                step_task_id=new_id(),
                subject={},
                assignees=[],
                deadline=utcnow(),
                continuation=[],
            )
        )
    return approval_id


def test_a_sweep_of_10000_runs_locks_their_chains_without_a_lock_table_slot_each(
    on_postgres: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = insert_waiting(10_000, -1, continuation=False)
    record_many = audit.record_many
    held: list[int] = []

    def record_many_and_count(session: Any, items: list[dict[str, Any]]) -> None:
        record_many(session, items)
        held.append(int(session.scalar(text("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()"))))

    monkeypatch.setattr(audit, "record_many", record_many_and_count)
    assert sweep_deadlines(10_000) == 10_000  # one transaction, one record_many of 10,000 entries
    assert sweep_deadlines(10_000) == 0
    assert len(held) == 1 and held[0] < 64, held  # 64: max_locks_per_transaction's default, for 10,000 chains
    with read_session() as s:
        chains = s.execute(text("SELECT chain, count(*), min(prev_hash) FROM hitl_audit GROUP BY chain")).all()
    assert sorted(c for c, _, _ in chains) == sorted(runs)
    assert {(n, prev) for _, n, prev in chains} == {(1, audit.GENESIS)}
    with session_scope() as s:  # a second batch over the same 10,000 chains chains onto each one's head
        fields = [
            audit.entry_fields(action="decide", actor="x", channel="cli", accepted=False, approval_id=None, run_id=r)
            for r in runs
        ]
        record_many(s, fields)
    report = audit.verify()
    assert (report.ok, report.checked, report.chains) == (True, 20_000, 10_000)


# ---------------------------------------------------------------- migration 0005, on SQLite and PostgreSQL


@pytest.fixture(params=DATABASES)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("postgres").create_database())


def test_entries_written_before_migration_0005_stay_verifiable_as_chain_legacy(empty_url: str, tmp_path: Path) -> None:
    engine = create_engine(empty_url)
    try:
        upgrade(engine, "0004")
        names = [*audit.HASHED_FIELDS, "hash"]
        old = table("hitl_audit", *(column(n) for n in names if n != "chain"))
        prev, rows = audit.GENESIS, []
        for i in range(3):  # as the code before 0005 wrote them: one chain over the log, hashed without chain
            fields = audit.entry_fields(
                action="decide", actor=f"u{i}", channel="cli", accepted=True, approval_id=None, run_id=f"r{i}"
            )
            row = {**fields, "prev_hash": prev}
            row["hash"] = prev = legacy_hash(row)
            rows.append(row)
        with engine.begin() as conn:
            conn.execute(insert(old), rows)
        upgrade(engine)
    finally:
        engine.dispose()
    with pointed_at(empty_url, tmp_path):
        assert [(e.chain, e.hash) for e in audit.entries()] == [("legacy", r["hash"]) for r in rows]
        report = audit.verify()
        assert (report.ok, report.checked, report.chains) == (True, 3, 1)
        audit.record_refused(action="cancel", actor="ops", channel="cli", reason="no", run_id=new_run())
        assert audit.anchor() is not None
        assert (audit.verify().ok, audit.verify().chains) == (True, 3)
        assert audit.verify(anchor=rows[-1]["hash"]).ok  # the head printed by verify before the upgrade
        with session_scope() as s:
            s.execute(text("UPDATE hitl_audit SET actor = 'mallory' WHERE actor = 'u1'"))
        report = audit.verify()
        assert (report.ok, report.problem, report.chain) == (False, "edited", "legacy")
