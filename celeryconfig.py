"""Celery configuration of hitl, read from the ``HITL_*`` settings (see ``hitl/settings.py``).

Delivery is at-least-once: a message is acknowledged after its task returns (``task_acks_late``) and
re-queued when the worker process dies mid-task (``task_reject_on_worker_lost``). The Redis visibility
timeout (how long an unacknowledged message stays invisible before Redis re-delivers it) is longer than
any step's hard time limit, so a long step is never delivered twice while it still runs. hitl keeps no
result backend: a run's state and results are rows in its own database.
"""

from __future__ import annotations

from celery.schedules import crontab

from hitl.broker import broker_url as _broker_url
from hitl.settings import get_settings

_settings = get_settings()

#: Hard time limit (s) of any step; a step running longer is killed and its message re-delivered.
STEP_TIME_LIMIT = 15 * 60

broker_url = _broker_url(_settings)
broker_connection_retry_on_startup = True
broker_transport_options = {
    # Longer than STEP_TIME_LIMIT: see the module docstring.
    "visibility_timeout": 2 * STEP_TIME_LIMIT,
}
task_time_limit = STEP_TIME_LIMIT
task_soft_time_limit = STEP_TIME_LIMIT - 30

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Task events for Flower: `celery -A hitl.app flower` shows each step (with its run_id) live.
worker_send_task_events = True
task_send_sent_event = True

enable_utc = True
timezone = "UTC"

imports = ["hitl.jobs", *_settings.workflow_modules]

beat_schedule_filename = str(_settings.home_dir / "celerybeat-schedule")
beat_schedule = {
    "hitl-sweep-deadlines": {"task": "hitl.sweep_deadlines", "schedule": _settings.sweep_interval},
    "hitl-relay-outbox": {"task": "hitl.relay_outbox", "schedule": _settings.relay_interval},
    "pending-approvals-digest": {
        "task": "tasks.digest.pending_digest",
        "schedule": crontab.from_string(_settings.digest_cron),
    },
}
