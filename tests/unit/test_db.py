"""Which database errors count as transient (a step's message is requeued) and which fail a run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from approvals.errors import InfrastructureError
from hitl.infra.db import is_transient, session_scope


def _error_from(url: str, *sql: str, hold_lock: Path | None = None) -> SQLAlchemyError:
    """Run the statements ``sql`` on a fresh engine and return the SQLAlchemy error they raised."""
    engine = create_engine(url, connect_args={"timeout": 0})
    blocker = sqlite3.connect(hold_lock, isolation_level=None) if hold_lock else None
    try:
        if blocker is not None:
            blocker.execute("BEGIN EXCLUSIVE")
        with engine.begin() as conn:
            for statement in sql:
                conn.execute(text(statement))
    except SQLAlchemyError as exc:
        return exc
    finally:
        if blocker is not None:
            blocker.close()
        engine.dispose()
    raise AssertionError(f"{sql!r} did not fail")


def test_a_locked_sqlite_database_is_transient(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x INTEGER)").connection.close()
    exc = _error_from(f"sqlite:///{db}", "INSERT INTO t VALUES (1)", hold_lock=db)
    assert "locked" in str(exc)
    assert is_transient(exc)


def test_a_missing_table_or_bad_sql_is_not_transient(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    missing = _error_from(url, "SELECT * FROM no_such_table")
    assert type(missing).__name__ == "OperationalError"  # SQLite's class for it, and still not transient
    assert not is_transient(missing)
    assert not is_transient(_error_from(url, "SELEC 1"))
    constraint = _error_from(url, "CREATE TABLE u (x INTEGER NOT NULL)", "INSERT INTO u VALUES (NULL)")
    assert type(constraint).__name__ == "IntegrityError"
    assert not is_transient(constraint)


def test_transient_is_found_through_the_infrastructure_error_it_was_raised_as(
    engine_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = engine_env / "hitl.db"
    with session_scope() as s:  # create the file and its schema
        s.execute(text("SELECT 1"))
    monkeypatch.setattr("hitl.infra.db.SQLITE_BUSY_TIMEOUT_MS", 50)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(InfrastructureError) as caught, session_scope() as s:
            s.execute(text("SELECT 1"))
    finally:
        blocker.close()
    assert is_transient(caught.value)
    assert not is_transient(InfrastructureError("database error: something else"))
    assert not is_transient(ValueError("not a database error"))


def test_head_revision_names_the_latest_migration() -> None:
    from hitl.infra.migrate import head_revision
    from hitl.infra.migrations import HEAD_REVISION

    assert head_revision() == HEAD_REVISION  # a new migration without HEAD_REVISION in step fails here


def test_a_new_process_checks_the_schema_while_another_holds_the_write_lock(
    engine_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema check on first use is a read: with SQLite's write lock held elsewhere (a worker's transaction,
    49 other deciders) it neither waits for the lock nor takes the busy database for one without a schema."""
    import time

    from hitl.infra.db import get_engine, read_session, reset_engine

    get_engine()  # migrated to head
    reset_engine()  # as a process starting now
    monkeypatch.setattr("hitl.infra.db.SQLITE_BUSY_TIMEOUT_MS", 2000)
    blocker = sqlite3.connect(engine_env / "hitl.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # a writer's lock: readers go on in WAL mode
    try:
        t0 = time.monotonic()
        with read_session() as s:
            assert s.scalar(text("SELECT count(*) FROM hitl_runs")) == 0
        assert time.monotonic() - t0 < 1.0
    finally:
        blocker.close()
