"""The engine's beat jobs: the deadline sweep and the outbox relay."""

from __future__ import annotations

from hitl import completion, outbox
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
