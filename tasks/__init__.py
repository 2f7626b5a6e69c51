"""This deployment's workflows and beat jobs (``HITL_WORKFLOW_MODULES=["tasks"]``, ``HITL_CELERY_CONFIG=celeryconfig``).

- ``content-review`` and ``db-change``: the sample workflows that ship with hitl (:mod:`hitl.examples`).
- ``pending_digest`` (:mod:`tasks.digest`): a beat cron job listing approvals pending for long, scheduled by
  this deployment's ``celeryconfig.py``.
"""

from __future__ import annotations

from hitl.examples import content, dbchange
from tasks import digest

__all__ = ["content", "dbchange", "digest"]
