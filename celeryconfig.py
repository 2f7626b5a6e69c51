"""This deployment's Celery configuration: hitl's defaults (:mod:`hitl.infra.celeryconfig`) and the beat jobs of
its own workflows (``tasks/``). hitl reads it when ``HITL_CELERY_CONFIG=celeryconfig`` (``docker-compose.yml``
sets it); without that variable hitl uses its defaults alone, so a project's own ``celeryconfig`` is never
picked up by accident.
"""

from __future__ import annotations

from celery.schedules import crontab

from hitl.infra.celeryconfig import *  # noqa: F403 - hitl's defaults, changed below
from hitl.infra.celeryconfig import beat_schedule as _hitl_jobs
from hitl.infra.celeryconfig import imports as _hitl_imports
from tasks.digest import DigestSettings

imports = [*_hitl_imports, "tasks"]
beat_schedule = {
    **_hitl_jobs,
    "pending-approvals-digest": {
        "task": "tasks.digest.pending_digest",
        "schedule": crontab.from_string(DigestSettings().cron),
    },
}
