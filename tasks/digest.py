"""A beat cron job of this deployment: a digest of approvals pending longer than ``DIGEST_AGE`` seconds.

Scheduled by ``DIGEST_CRON`` (default hourly; see ``celeryconfig.py``). Each digest is a row in ``app_digests``
and a log line; a notifier can send it on.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import JSON, Integer
from sqlalchemy.orm import Mapped, mapped_column

import hitl
from hitl.examples.store import AppBase
from hitl.infra.db import get_engine, session_scope

log = logging.getLogger(__name__)


class DigestSettings(BaseSettings):
    """The digest's own settings, from ``DIGEST_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="DIGEST_")

    cron: str = Field("0 * * * *", description="Crontab (m h dom mon dow, UTC) of the pending-approvals digest.")
    age: float = Field(3600.0, ge=0, description="Age (s) after which a pending approval is listed in the digest.")


class Digest(AppBase):
    """One digest of long-pending approvals, written by the beat cron job."""

    __tablename__ = "app_digests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))
    count: Mapped[int] = mapped_column(Integer)
    approvals: Mapped[list[Any]] = mapped_column(JSON)


def create_digest_table() -> None:
    """Create ``app_digests`` if missing (idempotent)."""
    Digest.metadata.create_all(get_engine(), tables=[Digest.__table__])  # type: ignore[list-item]


@hitl.app.task(name="tasks.digest.pending_digest")
def pending_digest() -> dict[str, Any]:
    """Record and log the approvals pending longer than ``DIGEST_AGE``; return the digest."""
    age = DigestSettings().age
    stale = hitl.list_approvals(status=hitl.ApprovalStatus.PENDING, older_than=age, limit=1000)
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
    create_digest_table()
    with session_scope() as s:
        s.add(Digest(count=len(entries), approvals=entries))
    log.info("pending-approvals digest: %d approval(s) pending longer than %ss", len(entries), age)
    return {"count": len(entries), "approvals": entries}
