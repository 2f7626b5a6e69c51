"""Fault injection: decisions are never lost and continuations never run twice, whatever fails.

Real processes throughout: a Redis server this module owns (so it can kill it), `celery worker` and `celery
beat`, the `hitl` CLI; on SQLite and on PostgreSQL. Each test checks the database afterwards.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from sqlalchemy import func, select

import hitl
from approvals.models import Approval, DecisionRecord, OutboxMessage, StepRecord
from approvals.status import ApprovalStatus, RunStatus
from hitl.infra.db import session_scope
from tests.flows import MIXED_AT_LEAST_ONCE, MIXED_EXACTLY_ONCE, Attempt, EffectRow, create_test_tables, effects
from tests.pg import PgServer
from tests.support import FIGURES, ROOT, Stack, running_stack, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

#: Figures of the fault runs, printed at the end of the session (see tests/conftest.py).


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Stack]:
    """A stack with a Redis server the test can kill, short visibility timeout and fast beat jobs."""
    with running_stack(
        tmp_path_factory.mktemp("faults"),
        external_broker=True,
        HITL_DATABASE_URL=database_url,
        HITL_VISIBILITY_TIMEOUT="10",
        HITL_STEP_TIME_LIMIT="8",
        HITL_SWEEP_INTERVAL="0.2",
        HITL_RELAY_INTERVAL="0.5",
        HITL_RELAY_GRACE="1",
        HITL_REDELIVER_AFTER="5",
        # A message kombu loses when a worker's main process is killed between taking it and recording it as
        # unacknowledged: the relay replays the run's latest message after this long without progress.
        HITL_STALL_AFTER="15",
    ) as s:
        create_test_tables()
        yield s


def terminal(run_ids: list[str]) -> dict[str, RunStatus]:
    with session_scope() as s:
        from approvals.models import Run

        rows = s.execute(select(Run.id, Run.status).where(Run.id.in_(run_ids))).all()
    return {rid: st for rid, st in rows if st.terminal}


def wait_all_terminal(stack: Stack, run_ids: list[str], timeout: float) -> dict[str, RunStatus]:
    """Wait until every run finished; on timeout fail with what the unfinished runs did last."""

    def all_done() -> dict[str, RunStatus] | None:
        done = terminal(run_ids)
        return done if len(done) == len(run_ids) else None

    try:
        return wait_for(all_done, timeout, f"all {len(run_ids)} runs to finish", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stuck_report(stack, run_ids)}") from None


def effect_counts(run_ids: list[str]) -> Counter[tuple[str, str]]:
    with session_scope() as s:
        rows = s.execute(
            select(EffectRow.run_id, EffectRow.label, func.count())
            .where(EffectRow.run_id.in_(run_ids))
            .group_by(EffectRow.run_id, EffectRow.label)
        ).all()
    return Counter({(r, label): n for r, label, n in rows})


def approvals_per_run(run_ids: list[str]) -> Counter[str]:
    with session_scope() as s:
        rows = s.execute(
            select(Approval.run_id, func.count()).where(Approval.run_id.in_(run_ids)).group_by(Approval.run_id)
        ).all()
    return Counter({r: n for r, n in rows})


def assert_exactly_once(
    run_ids: list[str], labels: str | tuple[str, ...] = "abc", at_least_once: tuple[str, ...] = ()
) -> None:
    """Journaled effects (``labels``) applied once per run; plain tasks' (``at_least_once``) at least once."""
    counts = effect_counts(run_ids)
    missing = [(r, x) for r in run_ids for x in (*labels, *at_least_once) if counts[(r, x)] == 0]
    doubled = {k: n for k, n in counts.items() if n > 1 and k[1] in labels}
    assert not missing, f"{len(missing)} effects never applied, e.g. {missing[:5]}"
    assert not doubled, f"{len(doubled)} effects applied more than once, e.g. {list(doubled.items())[:5]}"


#: The fault workflows: (name, journaled effects applied exactly once, plain effects applied at least once,
#: approvals per run).
WORKFLOWS = {
    "chaos": ("abc", (), 1),
    "chaos-mixed": (MIXED_EXACTLY_ONCE, MIXED_AT_LEAST_ONCE, 3),
}


def stuck_report(stack: Stack, run_ids: list[str]) -> str:
    """What an unfinished run did last and what the broker still holds, for a failure message."""
    import redis

    lines = []
    done = terminal(run_ids)
    for rid in [r for r in run_ids if r not in done][:5]:
        lines.append(
            f"run {rid}: " + ", ".join(f"{e.kind.value}:{e.name}:{e.task_id}" for e in hitl.get_run(rid).timeline)
        )
        with session_scope() as s:
            for rec in s.scalars(select(StepRecord).where(StepRecord.run_id == rid)):
                lines.append(f"  step {rec.task_id} {rec.name} {rec.status.value} attempt={rec.attempt}")
    if stack.redis is not None and stack.redis.proc is not None:
        client = redis.Redis(unix_socket_path=str(stack.redis.socket))
        lines.append(
            f"broker: queued={client.llen('celery')} unacked={client.hlen('unacked')} "
            f"mutex_ttl={client.ttl('unacked_mutex')}"
        )
        for raw in list(client.hvals("unacked"))[:10] + list(client.lrange("celery", 0, 9)):
            try:
                message = json.loads(raw)
                message = message[0] if isinstance(message, list) else message
                headers = message.get("headers", {})
                lines.append(f"  message {headers.get('task')} {headers.get('id')} run={headers.get('hitl_run')}")
            except (ValueError, AttributeError, KeyError):
                lines.append(f"  message (undecodable) {raw[:80]!r}")
    return "\n".join(lines)


class AutoApprover(threading.Thread):
    """Approves every pending approval of a workflow, as a person clicking through an inbox would."""

    def __init__(self, workflow: str) -> None:
        super().__init__(daemon=True)
        self.workflow = workflow
        self.stop = threading.Event()
        self.decided = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for a in hitl.list_approvals(workflow=self.workflow, limit=1000):
                try:
                    hitl.approve(a.id, actor="auto-approver")
                    self.decided += 1
                except hitl.HitlError:
                    pass
            self.stop.wait(0.2)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("workflow", list(WORKFLOWS))
def test_kill_9_workers_while_300_runs_go_through_steps_and_waits(
    fstack: Stack, database_url: str, record_property: Any, workflow: str
) -> None:
    exactly_once, at_least_once, approvals = WORKFLOWS[workflow]
    runs = 300 if workflow == "chaos" else 100  # a mixed run is 15 messages and 3 approvals: fewer runs
    rng = random.Random(20261121)
    run_ids = [hitl.start(workflow, {"i": i}) for i in range(runs)]
    approver = AutoApprover(workflow)
    approver.start()
    kills = {"pool_process": 0, "whole_worker": 0}
    deadline = time.monotonic() + 150
    try:
        while len(terminal(run_ids)) < runs and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.6))
            if kills["pool_process"] in (12, 30) and kills["whole_worker"] < 2 and kills["pool_process"] > 0:
                fstack.kill_and_restart_worker()  # kill -9 the main process and its pool, start a new one
                kills["whole_worker"] += 1
                kills["pool_process"] += 1
                continue
            try:
                children = psutil.Process(fstack.worker.proc.pid).children()
            except psutil.Error:  # the worker is being restarted
                continue
            if children:
                os.kill(rng.choice(children).pid, 9)
                kills["pool_process"] += 1
        statuses = wait_all_terminal(fstack, run_ids, timeout=max(120.0, deadline - time.monotonic()))
    finally:
        approver.stop.set()
        approver.join(10)
    counts = effect_counts(run_ids)
    record_property(
        FIGURES,
        {
            "test": f"kill -9 during {runs} runs of {workflow}",
            "database": "postgresql" if database_url else "sqlite",
            "runs": runs,
            "kills": kills["pool_process"] - kills["whole_worker"],
            "whole_worker_kills": kills["whole_worker"],
            "lost": sum(1 for r in run_ids for x in (*exactly_once, *at_least_once) if counts[(r, x)] == 0),
            "duplicated": sum(n - 1 for (_, label), n in counts.items() if n > 1 and label in exactly_once),
            "plain_task_reruns": sum(n - 1 for (_, label), n in counts.items() if n > 1 and label in at_least_once),
            "succeeded": sum(1 for st in statuses.values() if st is RunStatus.SUCCEEDED),
            "worker_exits_restarted_by_supervisor": fstack.crashes,
        },
    )
    assert kills["pool_process"] >= 10
    assert Counter(statuses.values()) == {RunStatus.SUCCEEDED: runs}
    assert_exactly_once(run_ids, exactly_once, at_least_once)
    assert set(approvals_per_run(run_ids).values()) == {approvals}  # no wait asked twice
    assert_decisions_once(run_ids)


def assert_decisions_once(run_ids: list[str]) -> None:
    """Every approval of the runs was decided once (a decision row each), none is left pending."""
    with session_scope() as s:
        rows = s.execute(
            select(Approval.id, Approval.status, func.count(DecisionRecord.approval_id))
            .outerjoin(DecisionRecord, DecisionRecord.approval_id == Approval.id)
            .where(Approval.run_id.in_(run_ids))
            .group_by(Approval.id, Approval.status)
        ).all()
    assert rows
    assert {status for _, status, _ in rows} <= {ApprovalStatus.APPROVED}
    assert {n for _, _, n in rows} == {1}


@pytest.mark.parametrize("workflow", list(WORKFLOWS))
def test_redis_killed_and_restarted_mid_run_loses_nothing(fstack: Stack, workflow: str) -> None:
    assert fstack.redis is not None
    exactly_once, at_least_once, _ = WORKFLOWS[workflow]
    run_ids = [hitl.start(workflow, {"i": i, "timeout": "2s", "default": "approved"}) for i in range(60)]
    time.sleep(1.0)
    fstack.redis.kill()  # SIGKILL; what it acknowledged is in its append-only file (appendfsync always)
    time.sleep(3.0)
    fstack.redis.start()
    statuses = wait_all_terminal(fstack, run_ids, timeout=120)
    assert Counter(statuses.values()) == {RunStatus.SUCCEEDED: len(run_ids)}
    assert_exactly_once(run_ids, exactly_once, at_least_once)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # a server to kill: not SQLite
def test_postgresql_killed_and_restarted_mid_run_loses_nothing(fstack: Stack, request: pytest.FixtureRequest) -> None:
    server: PgServer = request.getfixturevalue("postgres")
    run_ids = [hitl.start("chaos", {"i": i, "timeout": "2s", "default": "approved"}) for i in range(60)]
    time.sleep(0.3)  # steps are running, waits being stored, deadlines not yet due
    server.kill()  # every connection of the worker, beat and this process is cut mid-transaction
    time.sleep(3.0)
    server.start()
    statuses = wait_all_terminal(fstack, run_ids, timeout=120)
    assert Counter(statuses.values()) == {RunStatus.SUCCEEDED: len(run_ids)}
    assert_exactly_once(run_ids)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # a server that can end a connection
def test_a_connection_dropped_inside_a_step_requeues_it_instead_of_failing_the_run(fstack: Stack) -> None:
    """The server ends a step's connection mid-transaction while the database stays up: the step's message
    goes back to the queue and the step runs again (its first transaction rolled back), not a failed run."""
    run_id = hitl.start("severed", {"case": "connection dropped"})
    run = wait_for(lambda: (r := hitl.get_run(run_id)).status.terminal and r, 60, "severed run to finish")
    assert run.status is RunStatus.SUCCEEDED, run.error
    with session_scope() as s:
        attempts = s.scalar(select(func.count()).select_from(Attempt).where(Attempt.run_id == run_id))
        severed = s.execute(
            select(StepRecord.status, StepRecord.attempt).where(
                StepRecord.name == "tests.severed", StepRecord.run_id == run_id
            )
        ).all()
    assert attempts == 2
    assert [(st.value, n) for st, n in severed] == [("finished", 1)]  # a requeue is the same delivery attempt
    assert_exactly_once([run_id])


def test_approve_while_the_broker_is_down_resumes_once_it_is_back(fstack: Stack) -> None:
    assert fstack.redis is not None
    run_id = hitl.start("chaos", {"case": "broker down"})
    approval = wait_for(lambda: hitl.list_approvals(run_id=run_id), what="approval")[0]
    fstack.redis.kill()
    try:
        res = fstack.cli("approve", approval.id, "--by", "alice", timeout=120)
        assert res.code == 0, res.err
        assert "recorded" in res.out and "broker is unreachable" in res.out
        view = hitl.get_approval(approval.id)
        assert view.status is ApprovalStatus.APPROVED and view.decision is not None
        assert effect_counts([run_id])[(run_id, "b")] == 0
    finally:
        fstack.redis.start()
    assert wait_for(lambda: hitl.get_run(run_id).status is RunStatus.SUCCEEDED, timeout=60, what="run to resume")
    assert_exactly_once([run_id])


def test_50_concurrent_completions_one_decision_one_continuation(fstack: Stack) -> None:
    run_id = hitl.start("chaos", {"case": "50 deciders"})
    approval = wait_for(lambda: hitl.list_approvals(run_id=run_id), what="approval")[0]
    env = {**os.environ, **fstack.env}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hitl",
                "approve" if i % 2 else "reject",
                approval.id,
                "--by",
                f"person-{i}",
                *([] if i % 2 else ["--reason", "no"]),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(50)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    codes = Counter(p.returncode for p in procs)
    assert codes == {0: 1, 1: 49}, codes
    losers = [err for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode == 1]
    odd = [err for err in losers if not (err.startswith("error: approval") and "already" in err)]
    assert not odd, odd[:3]
    with session_scope() as s:
        assert (
            s.scalar(select(func.count()).select_from(DecisionRecord).where(DecisionRecord.approval_id == approval.id))
            == 1
        )
    # The chaos flow's continuation runs whatever the outcome: exactly once.
    final = wait_for(lambda: (r := hitl.get_run(run_id)).status.terminal and r, 60, "run to finish")
    assert final.status is RunStatus.SUCCEEDED
    assert_exactly_once([run_id])


def test_approve_racing_the_deadline_sweep_gives_one_outcome(fstack: Stack) -> None:
    run_ids = [hitl.start("chaos", {"i": i, "timeout": "3s"}) for i in range(20)]
    pending = wait_for(
        lambda: (
            (a := hitl.list_approvals(workflow="chaos", limit=1000))
            and len({x.run_id for x in a} & set(run_ids)) == len(run_ids)
            and a
        ),
        what="20 approvals",
    )
    mine = [a for a in pending if a.run_id in run_ids]
    outcomes: Counter[str] = Counter()
    for a in sorted(mine, key=lambda x: x.deadline):
        time.sleep(max(0.0, a.deadline.timestamp() - time.time() - 0.02))  # decide right at the deadline
        try:
            hitl.approve(a.id, actor="last-second")
            outcomes["approved"] += 1
        except (hitl.ApprovalExpired, hitl.AlreadyDecided):
            outcomes["refused"] += 1
    statuses = wait_all_terminal(fstack, run_ids, timeout=60)
    for a in mine:
        view = hitl.get_approval(a.id)
        assert view.decision is not None
        assert view.status in (ApprovalStatus.APPROVED, ApprovalStatus.TIMED_OUT)
        assert (view.decision.actor == "last-second") == (view.status is ApprovalStatus.APPROVED)
        # The chaos flow's continuation runs for either outcome: the run succeeds, "b" ran exactly once.
        assert statuses[a.run_id] is RunStatus.SUCCEEDED
    assert_exactly_once(run_ids)
    assert outcomes["approved"] == sum(1 for a in mine if hitl.get_approval(a.id).status is ApprovalStatus.APPROVED)


def test_two_beat_processes_time_out_every_due_approval_once(fstack: Stack) -> None:
    second = fstack.add_beat()
    try:
        run_ids = [hitl.start("chaos", {"i": i, "timeout": "1s"}) for i in range(100)]
        statuses = wait_all_terminal(fstack, run_ids, timeout=120)
        assert Counter(statuses.values()) == {RunStatus.SUCCEEDED: 100}
        with session_scope() as s:
            decisions = s.execute(
                select(DecisionRecord.actor, func.count())
                .join(Approval, Approval.id == DecisionRecord.approval_id)
                .where(Approval.run_id.in_(run_ids))
                .group_by(DecisionRecord.actor)
            ).all()
        assert dict(decisions) == {"hitl:deadline": 100}
        assert_exactly_once(run_ids)
        beat_logs = [svc.log_text() for svc in fstack.services if svc.name == "beat"]
        assert len(beat_logs) == 2
        assert all("hitl.sweep_deadlines" in log for log in beat_logs)  # both beats were sweeping
    finally:
        second.stop()


def test_step_failing_twice_then_succeeding_runs_later_steps_once_in_order(fstack: Stack) -> None:
    run_id = hitl.start("flaky", {"failures": 2})
    run = wait_for(lambda: (r := hitl.get_run(run_id)).status.terminal and r, 60, "flaky run to finish")
    assert run.status is RunStatus.SUCCEEDED
    with session_scope() as s:
        attempts = s.scalar(select(func.count()).select_from(Attempt).where(Attempt.run_id == run_id))
        steps = s.execute(
            select(StepRecord.name, StepRecord.attempt, StepRecord.finished_at)
            .where(StepRecord.run_id == run_id)
            .order_by(StepRecord.finished_at)
        ).all()
    assert attempts == 3
    assert [(name, attempt) for name, attempt, _ in steps] == [
        ("tests.flaky", 3),
        ("tests.chaos.effect", 1),
        ("tests.chaos.effect", 1),
    ]
    assert_exactly_once([run_id], labels="bc")
    assert json.dumps(run.result)  # the chain's last result is stored


def test_a_step_running_longer_than_redeliver_after_is_not_sent_again(fstack: Stack) -> None:
    """The relay re-sends a message that no step finished within HITL_REDELIVER_AFTER (5 s here), but not the
    message of a step still running: a running step marks its message delivered (hitl.delivery.steplog's watcher)."""
    run_id = hitl.start("slow", {"seconds": 6.5})
    run = wait_for(lambda: (r := hitl.get_run(run_id)).status.terminal and r, 60, "slow run to finish")
    assert run.status is RunStatus.SUCCEEDED
    assert len(effects(run_id, "slow")) == 1
    with session_scope() as s:
        resent = s.scalar(select(OutboxMessage.attempts).where(OutboxMessage.task_id == f"{run_id}.start"))
    assert resent == 0
