"""Readiness checks of the database, its schema and the broker (``GET /api/v1/health``, ``hitl health``)."""

from __future__ import annotations

import redis
from sqlalchemy import text

from approvals.errors import HitlError, SchemaOutdated


def check() -> tuple[bool, bool]:
    """Return whether the database and the broker answer, each within about a second."""
    from hitl.db import session_scope
    from hitl.events import client

    try:
        with session_scope() as s:
            s.execute(text("SELECT 1"))
        db_ok = True
    except SchemaOutdated:
        db_ok = True  # it answered, with a revision: schema_status() reports that
    except HitlError:
        db_ok = False
    try:
        r = client()
        broker_ok = bool(r is not None and r.ping())
    except redis.RedisError:
        broker_ok = False
    return db_ok, broker_ok


def schema_status() -> tuple[str | None, str | None]:
    """Return the database's migration revision and what is wrong with it for this hitl (one line saying what
    to run, see :func:`hitl.migrate.schema_problem`); the problem is None when the schema is the latest, and
    both are None when the database does not answer (:func:`check` reports that)."""
    from sqlalchemy.exc import SQLAlchemyError

    from hitl.db import get_engine
    from hitl.migrate import current_revision, schema_problem

    try:
        current = current_revision(get_engine(prepare=False))
    except SQLAlchemyError:
        return None, None
    return current, schema_problem(current)
