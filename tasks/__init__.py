"""Workflows and beat jobs built on hitl's public API.

- ``content-review`` (:mod:`tasks.content`): draft, editor review, publish; revise on rejection.
- ``db-change`` (:mod:`tasks.dbchange`): a validated change to catalogue rows, applied only on approval.
- ``pending_digest`` (:mod:`tasks.digest`): a beat cron job listing approvals pending for long.
"""

from __future__ import annotations

from tasks import content, dbchange, digest

__all__ = ["content", "dbchange", "digest"]
