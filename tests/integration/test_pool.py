"""The PostgreSQL pool pings a connection that sat idle before handing it out (hitl.infra.db._pinger), and a
connection cut while in use a moment ago fails once, after which the pool has fresh connections. Against a
real PostgreSQL server, whose backends are ended with ``pg_terminate_backend`` as a restart would."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from hitl.infra import db
from tests.pg import PgServer


def _backend(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    other = create_engine(url)
    with other.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    other.dispose()


@pytest.fixture
def url(postgres: PgServer) -> str:
    return postgres.create_database()


def test_an_idle_connection_cut_by_the_server_is_replaced_before_use(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = db.make_engine(url)
    first = _backend(engine)
    _terminate(url, first)
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 0.0)  # every checkout counts as idle
    assert _backend(engine) != first  # pinged, found dead, replaced: the caller saw nothing
    engine.dispose()


def test_a_connection_cut_right_after_use_fails_once_then_the_pool_reconnects(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.make_engine(url)
    first = _backend(engine)
    _terminate(url, first)
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 3600.0)  # nothing counts as idle: no ping
    with pytest.raises(OperationalError), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert _backend(engine) != first
    engine.dispose()
