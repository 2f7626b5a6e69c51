"""Reminders and escalation with real worker and beat processes, on SQLite and PostgreSQL: reminders at T1 and
every interval after, escalation at T2, no duplicate notice with two beats. The worker here is a default one
(it consumes every queue), so these tests also show notices are delivered without a dedicated notifier worker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import hitl
from approvals.schemas import NotificationView
from hitl.core.views import list_notifications
from tests.support import TEST_GROUPS, Stack, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Stack]:
    """The usual stack (one default worker, beat), with reminder sweeps and sender passes every 0.3 s."""
    with running_stack(
        tmp_path_factory.mktemp("remind"),
        HITL_DATABASE_URL=database_url,
        HITL_REMIND_INTERVAL="0.3",
        HITL_NOTIFY_INTERVAL="0.3",
    ) as s:
        yield s


def start(stack: Stack, **payload: Any) -> tuple[str, str]:
    """Start a gate run through the CLI; return (run id, approval id) once it waits."""
    res = stack.cli("start", "gate", "--payload", json.dumps(payload))
    assert res.code == 0, res.err
    run_id = res.out.strip()
    approval = wait_for(lambda: hitl.list_approvals(run_id=run_id), what=f"run {run_id} to wait")[0]
    return run_id, approval.id


def notices(approval_id: str, kind: str | None = None) -> list[NotificationView]:
    rows = sorted(list_notifications(approval_id), key=lambda n: (n.kind, n.seq))
    return [n for n in rows if kind is None or n.kind == kind]


def sent(approval_id: str, kind: str, count: int) -> list[NotificationView] | None:
    """The ``kind`` notices of an approval once at least ``count`` exist and all were delivered."""
    rows = notices(approval_id, kind)
    return rows if len(rows) >= count and all(n.state == "sent" for n in rows) else None


def test_reminders_at_t1_and_every_interval_after_until_decided(stack: Stack) -> None:
    run_id, a = start(stack, assignees=["editors"], remind_after="1s", remind_every="1s", timeout="1h")
    rows = wait_for(lambda: sent(a, "reminder", 3), timeout=60, what="three reminders delivered")
    created = hitl.get_approval(a).created_at
    assert [n.seq for n in rows[:3]] == [1, 2, 3]
    for n in rows:
        assert n.recipients == sorted(TEST_GROUPS["editors"])  # the group, expanded
        # Never early: reminder k is due at T1 + (k - 1) intervals.
        assert n.created_at >= created + timedelta(seconds=n.seq)
        assert n.delivered_by == ["log"] and n.attempts == 1
    timeline = hitl.get_run(run_id).timeline
    assert [e.detail["reminder"] for e in timeline if e.kind == "reminder_sent"][:3] == [1, 2, 3]

    listed = stack.cli("notifications", "list", "--approval", a, "--json")
    assert listed.code == 0, listed.err
    assert {(n["kind"], n["seq"], n["state"]) for n in listed.json()} >= {("reminder", 1, "sent")}
    table = stack.cli("notifications", "list", "--approval", a)
    assert table.code == 0 and "reminder" in table.out and "sent" in table.out

    assert stack.cli("approve", a, "--by", "alice").code == 0
    reminded = len(notices(a, "reminder"))
    # A run reminded 2 s after it started: every sweep that could still remind the decided approval (due
    # within 1 s of the decision) has run by the time this one is reminded.
    _, later = start(stack, remind_after="2s", timeout="1h")
    wait_for(lambda: notices(later, "reminder"), timeout=60, what="the later run's reminder")
    assert len(notices(a, "reminder")) == reminded


def test_escalation_at_t2_adds_the_group_and_notifies_it(stack: Stack) -> None:
    run_id, a = start(stack, assignees=["editors"], escalate_after="1s", escalate_to=["dba"], timeout="1h")
    (n,) = wait_for(lambda: sent(a, "escalation", 1), timeout=60, what="the escalation delivered")
    assert n.seq == 1 and n.recipients == sorted(TEST_GROUPS["dba"])
    view = hitl.get_approval(a)
    assert view.assignees == ["editors", "dba"]
    assert n.created_at >= view.created_at + timedelta(seconds=1)
    (event,) = [e for e in hitl.get_run(run_id).timeline if e.kind == "escalated"]
    assert event.detail["escalate_to"] == ["dba"]
    # dana is in dba only: escalation made her an assignee.
    assert stack.cli("approve", a, "--by", "dana").code == 0
    wait_for(lambda: hitl.get_run(run_id).status == "succeeded", what="the run to succeed")


def test_two_beats_write_and_send_each_notice_once(stack: Stack) -> None:
    stack.add_beat()
    runs = [
        start(
            stack,
            i=i,
            assignees=["editors"],
            remind_after="1s",
            remind_every="1s",
            escalate_after="1.5s",
            escalate_to=["dba"],
            timeout="4s",
        )
        for i in range(6)
    ]
    for run_id, _ in runs:
        wait_for(lambda r=run_id: hitl.get_run(r).status.terminal, timeout=60, what=f"run {run_id} to time out")
    logs = "".join(s.log_text() for s in stack.services if s.name == "worker")
    for _, a in runs:
        rows = wait_for(lambda a=a: sent(a, "reminder", 1), timeout=60, what="reminders delivered")
        with_seq = [n.seq for n in rows]
        assert with_seq == list(range(1, len(rows) + 1)), with_seq
        (esc,) = wait_for(lambda a=a: sent(a, "escalation", 1), timeout=60, what="the escalation delivered")
        for n in [*rows, esc]:
            # Delivered once: one log line per notice, whichever beat wrote it and whichever sender sent it.
            line = rf"notice {n.kind.value} #{n.seq} for approval {a}:"
            assert len(re.findall(line, logs)) == 1, (line, n)
            assert n.attempts == 1
    for beat in (s for s in stack.services if s.name == "beat"):
        assert beat.proc.poll() is None
