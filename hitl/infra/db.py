"""The database engine and sessions, one engine per process.

The engine is created lazily and re-created in a child after ``fork`` (a prefork worker never shares a
connection pool with its parent). SQLite runs in WAL mode with a busy timeout, so a worker, beat and the
CLI can write the same file; a pooled PostgreSQL connection idle for a second or more is pinged before use
(:func:`_pinger`).

The engine, the schema check and Core reads (:func:`read_scope`) import neither the ORM nor pydantic: a short
command such as ``hitl approvals list`` pays for SQLAlchemy Core alone. The ORM's session factories, with the
live-event hooks on them (:mod:`hitl.infra.events`), are made on the first session.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from approvals.errors import DatabaseUnavailable, InfrastructureError
from hitl.infra import env

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

#: SQLite waits this long (ms) for a lock held by another process before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: First and longest pause (s) between two tries to take SQLite's write lock at BEGIN.
SQLITE_LOCK_POLL_SECONDS = (0.0001, 0.002)

_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None
_read_engine: Engine | None = None  # the same engine and pool, with READ_ONLY set on its connections
_read_factory: sessionmaker[Session] | None = None
_autocommit_engine: Engine | None = None  # PostgreSQL: the same engine and pool, in autocommit mode
_one_statement_factory: sessionmaker[Session] | None = None  # see statement_scope
_pid = 0
_prepared = False  # the schema was upgraded or checked by this process (or the parent it forked from)


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


#: Execution option of a connection that only reads (:func:`read_scope`): on SQLite its transaction is a
#: plain (deferred) BEGIN, which in WAL mode takes no lock and waits for no writer.
READ_ONLY = "hitl_read_only"


def _on_sqlite_begin(conn: Any) -> None:
    raw = conn.connection.dbapi_connection
    if conn.get_execution_options().get(READ_ONLY):
        raw.execute("BEGIN")
        return
    # SQLite's own busy handler sleeps 1, 2, 5, 10, ... up to 100 ms between tries: a transaction queued
    # behind another writer for a moment then waits tens of milliseconds. Queue for the write lock here
    # instead, polling every 0.1 ms to 2 ms, up to the same busy timeout.
    raw.execute("PRAGMA busy_timeout=0")
    try:
        delay, deadline = SQLITE_LOCK_POLL_SECONDS[0], time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
            time.sleep(delay)
            delay = min(delay * 2, SQLITE_LOCK_POLL_SECONDS[1])
    finally:
        raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` with hitl's connection settings (see module docstring)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    engine = create_engine(url, pool_size=5, max_overflow=5)
    event.listen(engine, "checkin", _note_idle)
    event.listen(engine, "checkout", _pinger(engine.dialect))
    return engine


#: A pooled PostgreSQL connection idle for this long (s) is pinged before use (see :func:`_pinger`).
PING_IDLE_SECONDS = 1.0
_IDLE_SINCE = "hitl_idle_since"


def _note_idle(_dbapi_conn: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _pinger(dialect: Any) -> Any:
    """A pool "checkout" listener that pings a connection idle for :data:`PING_IDLE_SECONDS` or more before
    handing it out; raising ``DisconnectionError`` there makes the pool replace it and try again
    (https://docs.sqlalchemy.org/en/20/core/events.html#sqlalchemy.events.PoolEvents.checkout).

    This is ``pool_pre_ping`` for connections that sat in the pool, not for those a busy process gave back a
    moment ago: a ping cost 0.09 ms of the client's CPU per checkout (0.32 against 0.23 ms for a run's start
    in-process, plus the server's work), and a journaled step checks a connection out twice. A connection cut
    in between (the server restarted within that second) fails its statement instead; SQLAlchemy then replaces
    the pool's connections, and hitl handles the failure as any database outage (a step's message goes back
    to the queue, the relay tries again, a caller gets ``DatabaseUnavailable``).
    """

    def ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < PING_IDLE_SECONDS:
            return  # new, or in use a moment ago
        try:
            dialect.do_ping(dbapi_conn)  # SELECT 1 in autocommit mode, as pool_pre_ping does
        except dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc

    return ping_if_idle


def get_engine(*, prepare: bool = True) -> Engine:
    """Return this process's engine, creating it (again, after a fork) when needed.

    The first use in a process also readies the schema (unless ``prepare`` is false, for the health check
    that reports it): with ``HITL_AUTO_MIGRATE`` (the default) it upgrades it to the latest migration;
    without, it checks that the database is at it. Until that succeeds, each use tries again.

    Raises:
        DatabaseUnavailable: the database could not be reached (the message has its masked URL and the cause).
        SchemaOutdated: ``HITL_AUTO_MIGRATE`` is false and the schema is not at the latest migration.
        InfrastructureError: the migration failed.
    """
    global _engine, _factory, _read_engine, _read_factory, _autocommit_engine, _one_statement_factory, _pid, _prepared
    if _engine is None or _pid != os.getpid():
        if _engine is not None:
            _engine.dispose(close=False)  # the parent's connections stay the parent's
        engine = make_engine(env.database_url())
        _factory = _read_factory = _one_statement_factory = None
        _read_engine = engine.execution_options(**{READ_ONLY: True})
        postgresql = engine.dialect.name == "postgresql"
        _autocommit_engine = engine.execution_options(isolation_level="AUTOCOMMIT") if postgresql else None
        _engine = engine
        _pid = os.getpid()
    if prepare and not _prepared:
        _prepare(_engine)
        _prepared = True  # a forked child inherits it: its parent readied the same database
    return _engine


def _prepare(engine: Engine) -> None:
    try:
        if _at_head(engine):  # the usual case: one query, and Alembic is not even imported
            return
        from hitl.infra.migrate import check_schema, upgrade

        if env.auto_migrate():
            upgrade(engine)
        else:
            check_schema(engine)
    except SQLAlchemyError as exc:
        raise db_error(exc) from exc


def _at_head(engine: Engine) -> bool:
    """Whether the database's ``alembic_version`` says the latest migration (False too when it has no such table)."""
    from hitl.infra.migrations import HEAD_REVISION

    with engine.execution_options(**{READ_ONLY: True}).connect() as conn:  # a read: no write lock on SQLite
        try:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except (OperationalError, ProgrammingError) as exc:  # no table yet (SQLite says OperationalError)
            if is_transient(exc):  # busy, locked, unreachable: not a missing table
                raise
            conn.rollback()
            return False
    return found == [HEAD_REVISION]


def reset_engine() -> None:
    """Forget this process's engine (the next use creates one from the current settings)."""
    global _engine, _factory, _read_engine, _read_factory, _autocommit_engine, _one_statement_factory, _prepared
    if _engine is not None:
        _engine.dispose()
    _engine, _factory, _read_engine, _read_factory, _prepared = None, None, None, None, False
    _autocommit_engine = _one_statement_factory = None


#: SQLite result codes (low byte of ``sqlite_errorcode``) of failures that go away by themselves: busy,
#: locked, I/O error, disk full, cannot open, lock protocol (https://sqlite.org/rescode.html). SQLite reports
#: a missing table or a syntax error as an ``OperationalError`` as well (SQLITE_ERROR), which is not transient.
SQLITE_TRANSIENT_CODES = frozenset({5, 6, 10, 13, 14, 15})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a database failure worth trying again later.

    Transient are the errors PEP 249 names ``OperationalError`` ("not necessarily under the control of the
    programmer, e.g. an unexpected disconnect occurs, the data source name is not found, a transaction could
    not be processed") and ``InterfaceError``, as SQLAlchemy wraps them — on PostgreSQL a dropped or refused
    connection, an administrator shutdown, a serialization failure or deadlock, a statement timeout — and a
    connection-pool timeout. On SQLite only the result codes in :data:`SQLITE_TRANSIENT_CODES` count.
    Integrity and programming errors never do.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PoolTimeout):
            return True
        if isinstance(current, OperationalError | InterfaceError):
            code = getattr(current.orig, "sqlite_errorcode", None)
            return code is None or (code & 0xFF) in SQLITE_TRANSIENT_CODES
        current = current.__cause__ or current.__context__
    return False


def db_error(exc: SQLAlchemyError) -> InfrastructureError:
    """Return ``exc`` as hitl's error, on one line, with no password in it: :class:`DatabaseUnavailable`
    (the masked URL and the driver's reason) when connecting failed, else ``InfrastructureError`` with the
    driver's first line (never the statement or its parameters, which SQLAlchemy appends)."""
    from hitl.infra.redact import mask_url, one_line, scrub

    orig = getattr(exc, "orig", None)
    if (isinstance(exc, OperationalError | InterfaceError) and exc.statement is None) or isinstance(exc, PoolTimeout):
        url = mask_url(env.database_url())
        cause = scrub(one_line(str(orig if orig is not None else exc))) or type(exc).__name__
        return DatabaseUnavailable(f"database unreachable at {url}: {cause}")
    text = str(orig) if orig is not None else str(exc).split("\n", 1)[0]
    return InfrastructureError(f"database error: {type(orig or exc).__name__}: {scrub(one_line(text))}")


@contextmanager
def read_scope(*, one_statement: bool = False) -> Iterator[Connection]:
    """Yield a connection for reads only (Core statements), in a transaction rolled back at the end.

    On SQLite it takes no write lock (see :data:`READ_ONLY`); writing through it is a mistake. With
    ``one_statement`` (a read of one statement, which needs no transaction to see one snapshot), PostgreSQL's
    connection is in autocommit mode: no ``BEGIN`` and no ``ROLLBACK`` round trip (2 round trips, the pool's
    ping included, instead of 4).

    Raises:
        InfrastructureError: the database failed (raised from the SQLAlchemy error).
    """
    get_engine()
    engine = _autocommit_engine if one_statement and _autocommit_engine is not None else _read_engine
    assert engine is not None
    try:
        with engine.connect() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise db_error(exc) from exc


@contextmanager
def read_session() -> Iterator[Session]:
    """Yield an ORM session for reads only, rolled back and closed at the end.

    On SQLite its transaction takes no write lock (see :data:`READ_ONLY`), so it neither waits for a
    writer nor makes one wait; writing through it is a mistake.

    Raises:
        InfrastructureError: the database failed (raised from the SQLAlchemy error).
    """
    with _scope(read_only=True) as session:
        yield session


@contextmanager
def session_scope() -> Iterator[Session]:
    """Yield a session in a transaction: committed on success, rolled back on error, always closed.

    Raises:
        InfrastructureError: the database failed (raised from the SQLAlchemy error).
    """
    with _scope(read_only=False) as session:
        yield session


@contextmanager
def statement_scope() -> Iterator[Session]:
    """Yield a session for a write that is one SQL statement, atomic by itself; otherwise :func:`session_scope`.

    On PostgreSQL the session's connection is in autocommit mode: the statement is its own transaction, and
    neither ``BEGIN`` nor ``COMMIT`` makes a round trip (a one-statement write takes 1 round trip instead of 3,
    plus the pool's ping). Each statement commits as it runs, so a unit of work of two writes must not use it.
    The live-event hooks run as for :func:`session_scope`. On SQLite it is :func:`session_scope` (its
    ``BEGIN IMMEDIATE`` queues writers, and a round trip there is a function call).

    Raises:
        InfrastructureError: the database failed (raised from the SQLAlchemy error).
    """
    global _one_statement_factory
    get_engine()
    if _autocommit_engine is None:
        with _scope(read_only=False) as session:
            yield session
        return
    if _one_statement_factory is None:
        from sqlalchemy.orm import sessionmaker

        from hitl.infra import events

        factory = sessionmaker(_autocommit_engine, expire_on_commit=False)
        events.install(factory)
        _one_statement_factory = factory
    with _used(_one_statement_factory(), commit=True) as session:  # its commit sends no COMMIT
        yield session


def _session_factory(*, read_only: bool) -> sessionmaker[Session]:
    """This process's ORM session factory (for writes, or for reads only), made on first use.

    The live-event hooks are installed on the write factory before it is published, so no thread ever takes a
    session whose commits would not be published.
    """
    global _factory, _read_factory
    get_engine()
    if _factory is None:
        from sqlalchemy.orm import sessionmaker

        from hitl.infra import events

        assert _engine is not None and _read_engine is not None
        writer = sessionmaker(_engine, expire_on_commit=False)
        events.install(writer)
        _read_factory = sessionmaker(_read_engine, expire_on_commit=False)
        _factory = writer
    chosen = _read_factory if read_only else _factory
    assert chosen is not None
    return chosen


@contextmanager
def _scope(*, read_only: bool) -> Iterator[Session]:
    with _used(_session_factory(read_only=read_only)(), commit=not read_only) as session:
        yield session


@contextmanager
def _used(session: Session, *, commit: bool) -> Iterator[Session]:
    """Yield ``session``; commit it on success (if ``commit``), roll it back on error, always close it."""
    try:
        yield session
        if commit:
            session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        raise db_error(exc) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
