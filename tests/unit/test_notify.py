"""Reminder and escalation compare-and-sets, the notification sender's retries, and the email notifier against a
real SMTP server (aiosmtpd), on a SQLite file (no worker)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from approvals.errors import NotifierFailed
from approvals.models import Approval, Notification, RunEvent, utcnow
from approvals.schemas import Notice
from approvals.status import EventKind, NotificationKind
from hitl.core import reminders
from hitl.core.notify import SmtpNotifier, email_address, send_due
from hitl.core.reminders import next_reminder, sweep_reminders
from hitl.infra.db import session_scope
from hitl.infra.settings import get_settings
from tests.support import free_port
from tests.unit.test_completion import waiting_run


def make_due(approval_id: str, **values: Any) -> None:
    with session_scope() as s:
        s.execute(update(Approval).where(Approval.id == approval_id).values(**values))


def pending(assignees: list[str] | None = None, **values: Any) -> str:
    """A waiting run's pending approval (see ``waiting_run``) with ``assignees`` and other columns set."""
    approval_id = waiting_run()
    make_due(approval_id, assignees=assignees or [], **values)
    return approval_id


def notices(approval_id: str | None = None) -> list[Notification]:
    stmt = select(Notification).order_by(Notification.id)
    if approval_id:
        stmt = stmt.where(Notification.approval_id == approval_id)
    with session_scope() as s:
        return list(s.scalars(stmt))


def approval(approval_id: str) -> Approval:
    with session_scope() as s:
        return s.get_one(Approval, approval_id)


def test_next_reminder_is_one_interval_later_and_never_after_the_deadline() -> None:
    now = utcnow()
    deadline = now + timedelta(seconds=100)
    assert next_reminder(now, 10, deadline, now) == now + timedelta(seconds=10)
    assert next_reminder(now, None, deadline, now) is None
    assert next_reminder(now, 200, deadline, now) is None
    # A sweep that ran late does not owe a burst of missed reminders: the next is one interval from now.
    late = now + timedelta(seconds=35)
    assert next_reminder(now, 10, deadline, late) == late + timedelta(seconds=10)


def test_reminders_are_written_once_per_due_time(engine_env: Path) -> None:
    a = pending(
        assignees=["editors", "zoe"],
        policy={"remind_after": 1, "remind_every": 60},
        next_reminder_at=utcnow() - timedelta(seconds=1),
    )
    with_groups = {"editors": ["alice", "bob"]}
    get_settings().groups.update(with_groups)
    assert sweep_reminders() == 1
    assert sweep_reminders() == 0  # the next one is not due for a minute
    (n,) = notices(a)
    assert (n.kind, n.seq, n.recipients) == ("reminder", 1, ["alice", "bob", "zoe"])
    row = approval(a)
    assert row.reminders_sent == 1
    assert row.next_reminder_at is not None and row.next_reminder_at > utcnow() + timedelta(seconds=50)
    make_due(a, next_reminder_at=utcnow() - timedelta(seconds=1))
    assert sweep_reminders() == 1
    assert [(n.kind, n.seq) for n in notices(a)] == [("reminder", 1), ("reminder", 2)]
    with session_scope() as s:
        kinds = list(s.scalars(select(RunEvent.kind).where(RunEvent.run_id == row.run_id)))
    assert kinds.count(EventKind.REMINDED) == 2


def test_two_sweeps_that_read_the_same_due_reminder_write_one_notice(engine_env: Path) -> None:
    a = pending(policy={"remind_after": 1}, next_reminder_at=utcnow() - timedelta(seconds=1))
    now = utcnow()
    (due,) = reminders._due(Approval.next_reminder_at, 10, now)
    # Both sweeps read reminders_sent = 0; the first compare-and-set wins, the second finds 1 and writes nothing.
    assert reminders._remind(due, now) is True
    assert reminders._remind(due, now) is False
    assert len(notices(a)) == 1
    assert approval(a).next_reminder_at is None  # no remind_every: that was the only reminder


def test_escalation_adds_the_group_once_and_notifies_it(engine_env: Path) -> None:
    get_settings().groups.update({"dba": ["dana", "alice"]})
    a = pending(
        assignees=["editors"],
        policy={"escalate_after": 1, "escalate_to": ["dba"]},
        escalate_at=utcnow() - timedelta(seconds=1),
    )
    now = utcnow()
    (due,) = reminders._due(Approval.escalate_at, 10, now)
    assert reminders._escalate(due, now) is True
    assert reminders._escalate(due, now) is False  # a second beat with the same read
    assert sweep_reminders() == 0
    row = approval(a)
    assert row.assignees == ["editors", "dba"]
    assert row.escalated_at is not None and row.escalate_at is None
    (n,) = notices(a)
    assert (n.kind, n.seq, n.recipients) == ("escalation", 1, ["alice", "dana"])


def test_decided_approvals_are_not_reminded(engine_env: Path) -> None:
    a = pending(policy={"remind_after": 1}, next_reminder_at=utcnow() - timedelta(seconds=1))
    from hitl.core.completion import decide

    decide(a, "approved", actor="alice")
    assert sweep_reminders() == 0
    assert notices(a) == []


class Flaky:
    """A notifier that fails its first ``failures`` sends."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[Notice] = []
        self.calls = 0

    def send(self, notice: Notice) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise NotifierFailed(f"flaky: failure {self.calls}")
        self.sent.append(notice)


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.sent: list[Notice] = []

    def send(self, notice: Notice) -> None:
        self.sent.append(notice)


def retry_now() -> None:
    with session_scope() as s:
        s.execute(update(Notification).values(next_attempt_at=utcnow() - timedelta(seconds=1)))


def test_a_failed_notice_is_retried_with_backoff_and_only_on_the_notifiers_that_failed(engine_env: Path) -> None:
    a = pending(assignees=["zoe"], policy={"remind_after": 1}, next_reminder_at=utcnow())
    assert sweep_reminders() == 1
    flaky, recorder = Flaky(failures=2), Recorder()
    assert send_due(chosen=[recorder, flaky]) == 0
    (n,) = notices(a)
    assert n.attempts == 1 and n.sent_at is None and n.last_error == "flaky: failure 1"
    assert n.detail["delivered_by"] == ["recorder"]
    backoff = get_settings().notify_backoff
    assert n.next_attempt_at > utcnow() + timedelta(seconds=backoff * 0.5)
    assert send_due(chosen=[recorder, flaky]) == 0  # not due again yet
    retry_now()
    assert send_due(chosen=[recorder, flaky]) == 0
    (n,) = notices(a)
    assert n.attempts == 2 and n.last_error == "flaky: failure 2"
    assert n.next_attempt_at > utcnow() + timedelta(seconds=backoff * 1.5)  # doubled
    retry_now()
    assert send_due(chosen=[recorder, flaky]) == 1
    (n,) = notices(a)
    assert n.sent_at is not None and n.attempts == 3 and n.last_error is None
    assert n.detail["delivered_by"] == ["recorder", "flaky"]
    assert len(recorder.sent) == 1 and len(flaky.sent) == 1  # the recorder was not sent it again
    assert recorder.sent[0].kind is NotificationKind.REMINDER and recorder.sent[0].recipients == ["zoe"]
    assert recorder.sent[0].subject == {"s": 1}


def test_a_notice_is_given_up_after_the_last_attempt(engine_env: Path) -> None:
    a = pending(policy={"remind_after": 1}, next_reminder_at=utcnow())
    sweep_reminders()
    flaky = Flaky(failures=100)
    attempts = get_settings().notify_max_attempts
    for _ in range(attempts + 2):
        send_due(chosen=[flaky])
        retry_now()
    assert flaky.calls == attempts
    (n,) = notices(a)
    assert n.attempts == attempts and n.sent_at is None
    assert n.last_error is not None and n.last_error.startswith(f"gave up after {attempts} attempts: flaky")
    from hitl.core.views import list_notifications

    assert list_notifications(a)[0].state == "failed"


def test_email_addresses_of_users() -> None:
    assert email_address("alice", "example.org") == "alice@example.org"
    assert email_address("bob@elsewhere.net", "example.org") == "bob@elsewhere.net"
    assert email_address("alice", None) is None


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, list[Message]]]:
    """A real SMTP server (aiosmtpd) on a free loopback port; yields (port, messages received)."""
    from aiosmtpd.controller import Controller

    received: list[Message] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            msg = message_from_bytes(envelope.content)
            msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
            received.append(msg)
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, received
    finally:
        controller.stop()


def test_email_notifier_sends_through_a_real_smtp_server(
    engine_env: Path, smtp_server: tuple[int, list[Message]]
) -> None:
    port, received = smtp_server
    settings = get_settings().model_copy(
        update={"smtp_host": "127.0.0.1", "smtp_port": port, "email_domain": "example.org", "smtp_sender": "hitl@x.io"}
    )
    a = pending(assignees=["alice", "bob@elsewhere.net"], policy={"remind_after": 1}, next_reminder_at=utcnow())
    sweep_reminders()
    assert send_due(chosen=[SmtpNotifier(settings)]) == 1
    (msg,) = received
    assert msg["From"] == "hitl@x.io"
    assert msg["X-Envelope-To"] == "alice@example.org, bob@elsewhere.net"
    assert "reminder 1" in msg["Subject"]
    assert a in msg.get_payload()
    assert notices(a)[0].sent_at is not None


def test_email_notifier_failure_is_recorded(engine_env: Path) -> None:
    settings = get_settings().model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": free_port()})
    a = pending(assignees=["a@b.c"], policy={"remind_after": 1}, next_reminder_at=utcnow())
    sweep_reminders()
    assert send_due(chosen=[SmtpNotifier(settings)]) == 0
    (n,) = notices(a)
    assert n.last_error is not None and n.last_error.startswith("email: ConnectionRefusedError")
