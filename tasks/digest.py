"""A beat cron job: a digest of approvals pending longer than ``HITL_DIGEST_AGE`` seconds.

Scheduled by ``HITL_DIGEST_CRON`` (default hourly). Each digest is a row in ``app_digests`` and a log line;
a notifier can send it on.
"""

from __future__ import annotations

import logging
from typing import Any

import hitl
from hitl.db import session_scope
from hitl.settings import get_settings
from tasks.store import Digest, create_app_tables

log = logging.getLogger(__name__)


@hitl.app.task(name="tasks.digest.pending_digest")
def pending_digest() -> dict[str, Any]:
    """Record and log the approvals pending longer than ``HITL_DIGEST_AGE``; return the digest."""
    stale = hitl.list_approvals(status=hitl.ApprovalStatus.PENDING, older_than=get_settings().digest_age, limit=1000)
    entries = [
        {
            "approval_id": a.id,
            "run_id": a.run_id,
            "workflow": a.workflow,
            "key": a.key,
            "assignees": a.assignees,
            "created_at": a.created_at.isoformat(),
            "deadline": a.deadline.isoformat(),
        }
        for a in stale
    ]
    create_app_tables()
    with session_scope() as s:
        s.add(Digest(count=len(entries), approvals=entries))
    log.info(
        "pending-approvals digest: %d approval(s) pending longer than %ss", len(entries), get_settings().digest_age
    )
    return {"count": len(entries), "approvals": entries}
