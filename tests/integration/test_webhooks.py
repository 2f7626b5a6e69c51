"""Webhook notices against a real local HTTP server, with the processes ``hitl dev`` runs (a worker for steps and
sweeps, a worker on the notify queue alone, beat), on SQLite and PostgreSQL: a failing webhook is retried until it
answers, given up after the last attempt, and a webhook that hangs past a deadline does not delay it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import hitl
from approvals.schemas import NotificationView
from hitl.core.views import list_notifications
from tests.support import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 4


@dataclass
class Call:
    """One POST the webhook received."""

    approval_id: str
    kind: str
    seq: int
    started: datetime
    status: int = 0
    ended: datetime | None = None


@dataclass
class Hook:
    """A webhook receiver whose behaviour the run's payload picks (``{"webhook": {"fail": n} | {"hang": s}}``)."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, approval_id: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.approval_id == approval_id]

    def answer(self, body: dict[str, Any]) -> tuple[int, float]:
        """(status, seconds to hang) for a notice, recording the call."""
        plan = ((body.get("subject") or {}).get("prepared") or {}).get("webhook") or {}
        call = Call(body["approval_id"], body["kind"], body["seq"], datetime.now(UTC))
        with self.lock:
            same = (call.approval_id, call.kind, call.seq)
            earlier = [c for c in self.calls if (c.approval_id, c.kind, c.seq) == same]
            self.calls.append(call)
        call.status = 500 if len(earlier) < int(plan.get("fail", 0)) else 200
        return call.status, float(plan.get("hang", 0))

    def done(self, body: dict[str, Any]) -> None:
        with self.lock:
            for c in reversed(self.calls):
                if c.approval_id == body["approval_id"] and c.ended is None:
                    c.ended = datetime.now(UTC)
                    return


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    receiver = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, hang = receiver.answer(body)
            if hang:
                time.sleep(hang)  # a slow receiver, not synchronisation
            receiver.done(body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str, hook: Hook) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("hooks"),
        queues="celery",
        notifier=True,
        HITL_DATABASE_URL=database_url,
        HITL_REMIND_INTERVAL="0.3",
        HITL_NOTIFY_INTERVAL="0.3",
        HITL_NOTIFIERS='["log", "webhook"]',
        HITL_WEBHOOK_URL=hook.url,
        HITL_NOTIFY_TIMEOUT="15",
        HITL_NOTIFY_BACKOFF="0.2",
        HITL_NOTIFY_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
    ) as s:
        yield s


def start(stack: Stack, **payload: Any) -> tuple[str, str]:
    res = stack.cli("start", "gate", "--payload", json.dumps(payload))
    assert res.code == 0, res.err
    run_id = res.out.strip()
    approval = wait_for(lambda: hitl.list_approvals(run_id=run_id), what=f"run {run_id} to wait")[0]
    return run_id, approval.id


def notice(approval_id: str, state: str) -> NotificationView | None:
    rows = list_notifications(approval_id)
    return rows[0] if rows and rows[0].state == state else None


def notifier_log(stack: Stack) -> str:
    return "".join(s.log_text() for s in stack.services if s.name == "notifier")


def test_a_failing_webhook_is_retried_until_it_answers(stack: Stack, hook: Hook) -> None:
    _, a = start(stack, remind_after="1s", timeout="1h", webhook={"fail": 2})
    n = wait_for(lambda: notice(a, "sent"), timeout=60, what="the reminder delivered")
    assert n.attempts == 3 and n.last_error is None
    assert [c.status for c in hook.of(a)] == [500, 500, 200]
    # The log notifier delivered at the first attempt and was not sent the notice again.
    assert n.delivered_by == ["log", "webhook"]
    assert notifier_log(stack).count(f"notice reminder #1 for approval {a}:") == 1


def test_a_webhook_that_keeps_failing_is_given_up_after_the_last_attempt(stack: Stack, hook: Hook) -> None:
    _, a = start(stack, remind_after="1s", timeout="1h", webhook={"fail": 100})
    n = wait_for(lambda: notice(a, "failed"), timeout=60, what="the reminder given up")
    assert n.attempts == MAX_ATTEMPTS and n.sent_at is None
    assert n.last_error == f"gave up after {MAX_ATTEMPTS} attempts: webhook: HTTP 500 from {hook.url}"
    assert len(hook.of(a)) == MAX_ATTEMPTS
    listed = stack.cli("notifications", "list", "--approval", a)
    assert listed.code == 0 and "failed" in listed.out and "gave up" in listed.out


def test_a_webhook_hanging_past_the_deadline_does_not_delay_it(stack: Stack, hook: Hook) -> None:
    run_id, a = start(stack, remind_after=0.3, timeout="3s", webhook={"hang": 8})
    wait_for(lambda: hitl.get_approval(a).status == "timed_out", timeout=30, what="the approval to time out")
    view = hitl.get_approval(a)
    assert view.resolved_at is not None
    (call,) = hook.of(a)
    # The notice was being sent when the deadline passed, and still was when the sweep resolved the approval.
    assert call.started < view.deadline
    assert call.ended is None or call.ended > view.resolved_at
    # Resolved on time: the sweep runs every 0.5 s; allow for a loaded machine.
    assert view.resolved_at - view.deadline < timedelta(seconds=2.5)
    wait_for(lambda: hitl.get_run(run_id).status == "timed_out", what="the run to time out")
    # The slow webhook answered in the end (within HITL_NOTIFY_TIMEOUT), and the notice counts as sent.
    n = wait_for(lambda: notice(a, "sent"), timeout=30, what="the slow reminder delivered")
    assert n.attempts == 1
