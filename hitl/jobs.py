"""The engine's beat jobs: the deadline sweep, the outbox relay, the reminder sweep and the notification sender."""

from __future__ import annotations

from hitl import completion, notify, outbox, reminders
from hitl.app import app
from hitl.settings import get_settings


@app.task(name="hitl.sweep_deadlines")
def sweep_deadlines() -> int:
    """Time out due approvals (beat, every ``HITL_SWEEP_INTERVAL`` s); return how many were timed out."""
    total = 0
    batch = get_settings().sweep_batch
    while True:
        done = completion.sweep_deadlines(batch)
        total += done
        if done < batch:
            return total


@app.task(name="hitl.relay_outbox")
def relay_outbox() -> int:
    """Send outbox rows left unsent (beat, every ``HITL_RELAY_INTERVAL`` s); return how many were sent."""
    return outbox.relay()


@app.task(name="hitl.sweep_reminders")
def sweep_reminders() -> int:
    """Write due reminders and escalations (beat, every ``HITL_REMIND_INTERVAL`` s); return how many notices."""
    return reminders.sweep_reminders(get_settings().sweep_batch)


@app.task(name="hitl.send_notifications")
def send_notifications() -> int:
    """Send due notices (beat, every ``HITL_NOTIFY_INTERVAL`` s, queue ``HITL_NOTIFY_QUEUE``); return how many
    were delivered."""
    return notify.send_due()
