"""hitl's Celery configuration, read from the ``HITL_*`` settings (see :mod:`hitl.infra.settings`).

A deployment with Celery settings of its own names its module in ``HITL_CELERY_CONFIG``; that module starts with
``from hitl.infra.celeryconfig import *`` and changes what it needs (the repository's ``celeryconfig.py`` does).

Delivery is at-least-once: a message is acknowledged after its task returns (``task_acks_late``) and
re-queued when the worker process dies mid-task (``task_reject_on_worker_lost``). The Redis visibility
timeout (how long an unacknowledged message stays invisible before Redis re-delivers it) is longer than
any step's hard time limit, so a long step is never delivered twice while it still runs. A run's state and
results are rows in hitl's database; Celery's result backend holds only what chords need.
"""

from __future__ import annotations

from typing import Any

from kombu.entity import Queue

from hitl.infra.broker import broker_url as _broker_url
from hitl.infra.settings import get_settings, result_engine_options

_settings = get_settings()

broker_url = _broker_url(_settings)
broker_connection_retry_on_startup = True
# Connections a process keeps for publishing (Celery's default is 10). Sending a chord holds one for its header
# while Celery takes another for celery.chord_unlock, so a web process deciding in many threads at once needs
# more than one per thread.
broker_pool_limit = 64
# A worker sending the next link of a chain rides out a broker restart of up to about a minute (Celery's default
# gives up after about 1 s, and the task then fails with the rest of its chain lost). The outbox sends with
# Celery's default policy instead (hitl.delivery.canvas.apply_canvas): it keeps unsent rows for its relay.
task_publish_retry_policy = {"max_retries": 30, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}
broker_transport_options = {
    # HITL_VISIBILITY_TIMEOUT (default 30 min) is longer than HITL_STEP_TIME_LIMIT (default 15 min): the
    # settings refuse anything else. See the module docstring.
    "visibility_timeout": _settings.visibility_timeout,
    # A lost worker's unacknowledged messages are re-queued by the next scan after the visibility timeout;
    # scan every tenth of it (1 s to 60 s) instead of kombu's default of every ~100 s.
    "unacked_restore_interval": max(1.0, min(60.0, _settings.visibility_timeout / 10)),
    "unacked_restore_throttle": 1,
}
# A step running longer than this is killed (its process replaced) and its message re-delivered.
task_time_limit = _settings.step_time_limit
task_soft_time_limit = max(_settings.step_time_limit * 0.9, _settings.step_time_limit - 30)

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
# Results are not stored (a run's state and results are rows in hitl's own tables), except by tasks in a group
# that feeds a chord (hitl.delivery.canvas sets ignore_result=False on them): Celery's chord join reads them from the
# result backend. The default is Celery's database backend on hitl's database, which outlives a broker restart.
task_ignore_result = True
result_backend = _settings.resolved_result_backend
database_engine_options = result_engine_options(result_backend)
result_expires = 86400

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Task events for Flower: `celery -A hitl.app flower` shows each step (with its run_id) live.
worker_send_task_events = True
task_send_sent_event = True

enable_utc = True
timezone = "UTC"

imports = ["hitl.worker", *_settings.workflow_modules]

# Notices go out on their own queue, so a worker consuming only it (`hitl dev` runs one; in production
# `hitl worker -Q hitl.notify`) keeps a slow notifier off the processes that run steps and sweep deadlines.
# A worker started without -Q consumes both queues, so notices are delivered with any default setup.
task_default_queue = "celery"
task_queues = (Queue("celery"), Queue(_settings.notify_queue))  # type: ignore[no-untyped-call]
task_routes = {"hitl.send_notifications": {"queue": _settings.notify_queue}}

beat_schedule_filename = str(_settings.home_dir / "celerybeat-schedule")


def _job(task: str, interval: float) -> dict[str, Any]:
    """A beat entry every ``interval`` seconds whose message expires after ``max(interval, 60)`` seconds.

    Behind a backlog, beat keeps sending a job each interval; the copies would all run in a row once the queue
    drains. An expired copy is discarded by the worker unrun (the next one is on its way), so at most 60 s worth
    of copies run. The 60 s floor keeps a job alive across clock skew between beat's host and a worker's:
    ``expires`` is an absolute time set by the sender.
    """
    return {"task": task, "schedule": interval, "options": {"expires": max(interval, 60.0)}}


beat_schedule = {
    "hitl-sweep-deadlines": _job("hitl.sweep_deadlines", _settings.sweep_interval),
    "hitl-relay-outbox": _job("hitl.relay_outbox", _settings.relay_interval),
    "hitl-sweep-reminders": _job("hitl.sweep_reminders", _settings.remind_interval),
    "hitl-send-notifications": _job("hitl.send_notifications", _settings.notify_interval),
    "hitl-anchor-audit": _job("hitl.anchor_audit", _settings.audit_anchor_interval),
}
