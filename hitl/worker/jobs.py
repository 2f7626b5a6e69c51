"""The engine's beat jobs: the deadline sweep, the outbox relay, the reminder sweep, the notification sender and
the audit log's anchors."""

from __future__ import annotations

from typing import Any

from celery import signals

from hitl.core import audit, deadlines, notify, reminders
from hitl.delivery import outbox
from hitl.infra.celery_app import app
from hitl.infra.settings import get_settings
from hitl.worker import signals as _signals  # noqa: F401 - connects the handlers of plain tasks' signals
from hitl.worker import waits as _waits  # noqa: F401 - registers hitl.wait_for_approval and hitl.finish_run


@app.task(name="hitl.sweep_deadlines")
def sweep_deadlines() -> int:
    """Time out due approvals (beat, every ``HITL_SWEEP_INTERVAL`` s); return how many were timed out."""
    total = 0
    batch = get_settings().sweep_batch
    while True:
        done = deadlines.sweep(batch)
        total += done
        if done < batch:
            return total


@app.task(name="hitl.relay_outbox")
def relay_outbox() -> int:
    """Send outbox rows left unsent (beat, every ``HITL_RELAY_INTERVAL`` s); return how many were sent."""
    return outbox.relay() + outbox.replay_stalled()


@app.task(name="hitl.sweep_reminders")
def sweep_reminders() -> int:
    """Write due reminders and escalations (beat, every ``HITL_REMIND_INTERVAL`` s); return how many notices."""
    return reminders.sweep_reminders(get_settings().sweep_batch)


@app.task(name="hitl.send_notifications")
def send_notifications() -> int:
    """Send due notices (beat, every ``HITL_NOTIFY_INTERVAL`` s, queue ``HITL_NOTIFY_QUEUE``); return how many
    were delivered."""
    return notify.send_due()


@app.task(name="hitl.anchor_audit")
def anchor_audit() -> int | None:
    """Anchor the audit log's chains (beat, every ``HITL_AUDIT_ANCHOR_INTERVAL`` s); return the anchor entry's
    id, or None when no chain got entries since the previous anchor (see :func:`hitl.core.audit.anchor`)."""
    return audit.anchor()


@signals.worker_ready.connect
def _relay_on_start(**_: Any) -> None:
    # Messages committed to the outbox while no worker or broker was up go out now, not at the next tick.
    outbox.relay(grace_seconds=0)
