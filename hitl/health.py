"""Readiness checks of the database and the broker (``GET /api/v1/health``)."""

from __future__ import annotations

import redis
from sqlalchemy import text

from approvals.errors import HitlError


def check() -> tuple[bool, bool]:
    """Return whether the database and the broker answer, each within about a second."""
    from hitl.db import session_scope
    from hitl.events import client

    try:
        with session_scope() as s:
            s.execute(text("SELECT 1"))
        db_ok = True
    except HitlError:
        db_ok = False
    try:
        r = client()
        broker_ok = bool(r is not None and r.ping())
    except redis.RedisError:
        broker_ok = False
    return db_ok, broker_ok
