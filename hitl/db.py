"""The database engine and sessions, one engine per process.

The engine is created lazily and re-created in a child after ``fork`` (a prefork worker never shares a
connection pool with its parent). SQLite runs in WAL mode with a busy timeout, so a worker, beat and the
CLI can write the same file; PostgreSQL connections are checked with ``pool_pre_ping``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from approvals.errors import HitlError, InfrastructureError
from hitl import events
from hitl.settings import get_settings

#: SQLite waits this long (ms) for a lock held by another process before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000

_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None
_pid = 0


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy issue BEGIN itself, and take the write lock at BEGIN (IMMEDIATE): two writers then
    # queue on the busy timeout instead of failing with "database is locked" on lock upgrade.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _on_sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` with hitl's connection settings (see module docstring)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def get_engine() -> Engine:
    """Return this process's engine, creating it (again, after a fork) when needed."""
    global _engine, _factory, _pid
    if _engine is None or _pid != os.getpid():
        if _engine is not None:
            _engine.dispose(close=False)  # the parent's connections stay the parent's
        fresh = _engine is None
        _engine = make_engine(get_settings().resolved_database_url)
        _factory = sessionmaker(_engine, expire_on_commit=False)
        events.install(_factory)
        _pid = os.getpid()
        if fresh and get_settings().auto_migrate:
            from hitl.migrate import upgrade

            upgrade(_engine)
    return _engine


def reset_engine() -> None:
    """Forget this process's engine (the next use creates one from the current settings)."""
    global _engine, _factory
    if _engine is not None:
        _engine.dispose()
    _engine, _factory = None, None


@contextmanager
def session_scope() -> Iterator[Session]:
    """Yield a session in a transaction: committed on success, rolled back on error, always closed.

    Raises:
        InfrastructureError: the database failed (raised from the SQLAlchemy error).
    """
    get_engine()
    assert _factory is not None
    session = _factory()
    try:
        yield session
        session.commit()
    except HitlError:
        session.rollback()
        raise
    except SQLAlchemyError as exc:
        session.rollback()
        raise InfrastructureError(f"database error: {exc.__class__.__name__}: {exc}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
