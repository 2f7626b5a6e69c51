"""The outbox relay: what it re-sends, when, and what counts as a re-send.

The fast tier: SQLite and kombu's in-memory transport, time moved by rewriting ``sent_at``; the fault suite
checks the same rules with real workers, Redis and PostgreSQL (kill -9, broker and database restarts).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

import hitl
from approvals.models import OutboxMessage, utcnow
from hitl.delivery import outbox
from hitl.infra.db import session_scope
from hitl.infra.settings import get_settings


def _row(task_id: str) -> OutboxMessage:
    with session_scope() as s:
        row = s.scalars(select(OutboxMessage).where(OutboxMessage.task_id == task_id)).one()
        s.expunge(row)
        return row


def _sent_ago(task_id: str, seconds: float) -> None:
    with session_scope() as s:
        s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.task_id == task_id)
            .values(sent_at=utcnow() - timedelta(seconds=seconds))
        )


def test_a_sent_undelivered_row_is_resent_after_1_2_4_times_redeliver_after(engine_env: Path) -> None:
    run_id = hitl.start("gate", {"n": 1})
    task_id = f"{run_id}.start"
    after = get_settings().redeliver_after
    assert _row(task_id).sent_at is not None and _row(task_id).attempts == 0
    assert outbox.relay() == 0  # just sent: most likely queued, not lost
    for resends, factor in enumerate((1, 2, 4)):
        _sent_ago(task_id, after * factor - 5)
        assert outbox.relay() == 0, f"re-sent before {factor} x HITL_REDELIVER_AFTER"
        _sent_ago(task_id, after * factor + 5)
        assert outbox.relay() == 1, f"not re-sent after {factor} x HITL_REDELIVER_AFTER"
        assert _row(task_id).attempts == resends + 1


def test_a_delivered_row_is_never_resent(engine_env: Path) -> None:
    run_id = hitl.start("gate", {"n": 1})
    task_id = f"{run_id}.start"
    with session_scope() as s:
        outbox.mark_delivered(s, task_id)
    _sent_ago(task_id, get_settings().redeliver_after * 100)
    assert outbox.relay() == 0


def test_failed_publishes_do_not_count_as_resends(engine_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row that could not be published while the broker was down is sent by the relay once the broker is
    back, and is re-sent after one HITL_REDELIVER_AFTER if its step never received it — not after 2**k."""
    down = OSError("broker down (simulated)")
    with monkeypatch.context() as m:
        m.setattr(outbox, "_send", lambda rows, strict=False: (0, down))
        run_id = hitl.start("gate", {"n": 1})
        task_id = f"{run_id}.start"
        for _ in range(3):  # three relay passes during the outage
            assert _row(task_id).sent_at is None
            assert outbox.relay(grace_seconds=0) == 0
    row = _row(task_id)
    assert row.sent_at is None and row.attempts == 0
    assert outbox.relay(grace_seconds=0) == 1  # the broker is back: sent
    assert _row(task_id).attempts == 0 and _row(task_id).sent_at is not None
    _sent_ago(task_id, get_settings().redeliver_after + 5)
    assert outbox.relay() == 1
    assert _row(task_id).attempts == 1


def test_a_run_without_progress_gets_its_latest_message_again_with_backoff(
    engine_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message the broker lost between waits leaves a run running with nothing on its way: after
    HITL_STALL_AFTER the relay sends the run's latest message again, then after 2, 4, ... periods, never for a
    waiting run."""
    from datetime import timedelta

    from sqlalchemy import update

    from approvals.models import Run, RunEvent, utcnow
    from hitl.infra.db import session_scope

    monkeypatch.setenv("HITL_STALL_AFTER", "60")
    get_settings.cache_clear()
    stalled = hitl.start("plain-nowait", {"topic": "lost"})
    fresh = hitl.start("plain-nowait", {"topic": "busy"})
    long_ago = utcnow() - timedelta(seconds=120)
    with session_scope() as s:
        s.execute(update(Run).where(Run.id == stalled).values(updated_at=long_ago))
        s.execute(update(RunEvent).where(RunEvent.run_id == stalled).values(at=long_ago))
    sent: list[str] = []
    monkeypatch.setattr(outbox, "apply_canvas", lambda sigs, args, task_id, run_id, producer=None: sent.append(task_id))
    assert outbox.replay_stalled() == 1
    assert sent == [f"{stalled}.start"]  # the stalled run's start, not the other run's
    assert outbox.replay_stalled() == 0  # touched: not again until another period passes
    assert hitl.get_run(fresh).status is hitl.RunStatus.PENDING

    def quiet_for(seconds: float) -> None:
        when = utcnow() - timedelta(seconds=seconds)
        with session_scope() as s:
            s.execute(update(Run).where(Run.id == stalled).values(updated_at=when))
            s.execute(update(RunEvent).where(RunEvent.run_id == stalled).values(at=when))

    quiet_for(90)  # one period and a half since the replay: the second replay waits two periods
    assert outbox.replay_stalled() == 0
    quiet_for(130)
    assert outbox.replay_stalled() == 1
    assert sent == [f"{stalled}.start"] * 2
    quiet_for(130)  # the third waits four periods
    assert outbox.replay_stalled() == 0
    quiet_for(250)
    assert outbox.replay_stalled() == 1
