"""Live events without a Redis broker, in-process against real servers: ``HITL_EVENTS_URL`` beside a
RabbitMQ URL, and PostgreSQL's LISTEN/NOTIFY with transactions committing out of id order.

Timeline rows are written as the engine writes them (:func:`approvals.transitions.add_event` in a session
of :func:`hitl.infra.db.session_scope`); the hub of :mod:`hitl.api.livebus` receives them as ``hitl serve`` does.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from approvals.models import Run
from approvals.status import EventKind, RunStatus
from approvals.transitions import add_event
from hitl.api import livebus
from hitl.infra import events
from hitl.infra.events import INBOX_CHANNEL, run_channel
from tests.pg import PgServer
from tests.support import RedisServer, base_env, point_process_at

pytestmark = pytest.mark.integration


def _new_run(run_id: str) -> None:
    from hitl.infra.db import session_scope

    with session_scope() as s:
        s.add(Run(id=run_id, workflow="gate", status=RunStatus.WAITING, payload={}))


def _event(run_id: str, kind: EventKind, hold: threading.Event | None = None) -> None:
    """Append one timeline row and commit (after ``hold`` is set, when given: an id taken, committed late)."""
    from hitl.infra.db import session_scope

    with session_scope() as s:
        add_event(s, run_id, kind, "gate")
        if hold is not None:
            assert hold.wait(30)


async def _next(feed: livebus.Feed, timeout: float = 10) -> events.LiveEvent:
    got = await feed.get(timeout)
    assert got is not None, "no live event came"
    return got


def test_events_url_carries_live_events_beside_a_rabbitmq_broker(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    try:
        point_process_at(
            base_env(tmp_path, HITL_BROKER_URL="amqp://guest:guest@127.0.0.1:1//", HITL_EVENTS_URL=redis_server.url)
        )
        assert events.mode() == "redis"
        _new_run("r-events-url")

        async def main() -> tuple[events.LiveEvent, events.LiveEvent]:
            hub = livebus.hub()
            assert isinstance(hub, livebus.RedisHub)
            run_feed, inbox_feed = await hub.subscribe(run_channel("r-events-url")), await hub.subscribe(INBOX_CHANNEL)
            await asyncio.sleep(events.CATCH_UP_AFTER_SECONDS)  # publishers refresh their list of listened channels
            await asyncio.to_thread(_event, "r-events-url", EventKind.WAITING)
            got = await _next(run_feed), await _next(inbox_feed)
            await livebus.shutdown()
            return got

        on_run, on_inbox = asyncio.run(main())
        assert on_run["id"] == on_inbox["id"] and on_run["kind"] == "waiting_for_input"
    finally:
        redis_server.kill()


def test_postgresql_notify_brings_rows_committed_out_of_id_order(tmp_path: Path, postgres: PgServer) -> None:
    point_process_at(
        base_env(
            tmp_path, HITL_BROKER_URL="amqp://guest:guest@127.0.0.1:1//", HITL_DATABASE_URL=postgres.create_database()
        )
    )
    assert events.mode() == "postgresql"
    _new_run("r-notify")

    async def main() -> list[int]:
        hub = livebus.hub()
        assert isinstance(hub, livebus.DatabaseHub) and hub.listen_url is not None
        feed = await hub.subscribe(run_channel("r-notify"))
        # The first transaction takes the lower id and commits after the second.
        hold = threading.Event()
        late = asyncio.create_task(asyncio.to_thread(_event, "r-notify", EventKind.STEP_FINISHED, hold))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_event, "r-notify", EventKind.STEP_FINISHED)
        first = await _next(feed)
        hold.set()
        await late
        second = await _next(feed)
        nothing = await feed.get(1.0)
        await livebus.shutdown()
        assert nothing is None  # each row once
        return [first["id"], second["id"]]

    first, second = asyncio.run(main())
    assert first > second  # the higher id came first; the lower one, committed later, still came
