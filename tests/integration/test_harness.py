"""hitl.testing, as a user's own tests use it: workflows run in-process up to their waits, decided, and run to
their ends (plain tasks, a journaled step, a group feeding a wait, a parallel wait, a timeout)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import hitl
from hitl.testing import Harness, harness
from tests import flows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    before = {k: v for k, v in os.environ.items() if k.startswith("HITL_")}
    with harness(tmp_path_factory.mktemp("harness"), workflow_modules=["tests.flows"]) as running:
        flows.create_test_tables()
        yield running
    assert {k: v for k, v in os.environ.items() if k.startswith("HITL_")} == before  # settings restored


def test_a_plain_workflow_waits_is_approved_and_ends(h: Harness) -> None:
    run_id = h.start("plain", {"topic": "tides"})
    approval = h.wait_for_approval(run_id)
    assert approval.key == "review" and approval.subject == {"draft": "about tides"}
    assert h.run(run_id).status is hitl.RunStatus.WAITING
    h.approve(approval.id, actor="alice", comment="fine")
    run = h.wait_for_end(run_id)
    assert run.status is hitl.RunStatus.SUCCEEDED
    assert [e.step for e in flows.effects(run_id)] == ["decided"]  # the continuation ran once


def test_a_rejection_and_a_timeout_end_their_runs(h: Harness) -> None:
    rejected = h.start("gate", {"n": 1})
    h.reject(h.wait_for_approval(rejected).id, actor="bob", reason="no")
    assert h.wait_for_end(rejected).status is hitl.RunStatus.REJECTED

    timed_out = h.start("plain", {"topic": "late"})
    approval = h.wait_for_approval(timed_out)
    assert h.expire(approval.id) == 1  # the sweep beat would run, now
    assert h.wait_for_end(timed_out).status is hitl.RunStatus.SUCCEEDED  # plain's continuation takes the timeout
    assert hitl.get_approval(approval.id).status is hitl.ApprovalStatus.TIMED_OUT


def test_a_group_before_a_wait_and_a_parallel_wait(h: Harness) -> None:
    grouped = h.start("group-subject", {})
    assert h.wait_for_approval(grouped).subject == [{"part": 0}, {"part": 1}, {"part": 2}]

    both = h.start("parallel", {"topic": "contract"})
    h.approve(h.wait_for_approval(both, key="legal").id, actor="legal")
    assert h.run(both).status is hitl.RunStatus.WAITING  # still waiting for finance
    h.approve(h.wait_for_approval(both, key="finance").id, actor="finance")
    assert h.wait_for_end(both).status is hitl.RunStatus.SUCCEEDED


def test_a_run_that_never_waits_says_what_it_is_doing(h: Harness) -> None:
    run_id = h.start("plain-nowait", {"topic": "x"})
    with pytest.raises(
        AssertionError, match=rf"run {run_id} \(plain-nowait\): waited 1s for a pending approval; the run is "
    ):
        h.wait_for_approval(run_id, timeout=1)
    assert h.wait_for_end(run_id).status is hitl.RunStatus.SUCCEEDED
