"""Readiness checks of the database, its schema and the broker (``GET /api/v1/health``, ``hitl health``)."""

from __future__ import annotations

from sqlalchemy import text

from approvals.errors import HitlError, SchemaOutdated

#: Seconds a broker may take to accept a connection before it counts as unreachable.
BROKER_TIMEOUT_SECONDS = 1.0


def broker_problem(url: str | None = None, timeout: float = BROKER_TIMEOUT_SECONDS) -> str | None:
    """Connect to the broker at ``url`` (default: the one in force) through kombu, for any transport
    (Redis, RabbitMQ, SQS, ...); return None when it accepted the connection, else why not (one line, no
    password: kombu's errors do not carry the URL).

    One attempt, no retry: ``Connection.ensure_connection(max_retries=0)`` raises the first failure.
    """
    from kombu.connection import Connection

    from hitl.infra.broker import broker_url

    conn = Connection(url or broker_url(), connect_timeout=timeout)  # type: ignore[no-untyped-call]
    try:
        conn.ensure_connection(max_retries=0, timeout=timeout)  # type: ignore[no-untyped-call]
    except Exception as exc:  # kombu raises the transport's own errors (OSError, redis, amqp, ...)
        return f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    finally:
        conn.release()  # type: ignore[no-untyped-call]
    return None


def check() -> tuple[bool, bool]:
    """Return whether the database and the broker answer, each within about a second."""
    from hitl.infra.db import session_scope

    try:
        with session_scope() as s:
            s.execute(text("SELECT 1"))
        db_ok = True
    except SchemaOutdated:
        db_ok = True  # it answered, with a revision: schema_status() reports that
    except HitlError:
        db_ok = False
    return db_ok, broker_problem() is None


def schema_status() -> tuple[str | None, str | None]:
    """Return the database's migration revision and what is wrong with it for this hitl (one line saying what
    to run, see :func:`hitl.infra.migrate.schema_problem`); the problem is None when the schema is the latest, and
    both are None when the database does not answer (:func:`check` reports that)."""
    from sqlalchemy.exc import SQLAlchemyError

    from hitl.infra.db import get_engine
    from hitl.infra.migrate import current_revision, schema_problem

    try:
        current = current_revision(get_engine(prepare=False))
    except SQLAlchemyError:
        return None, None
    return current, schema_problem(current)
