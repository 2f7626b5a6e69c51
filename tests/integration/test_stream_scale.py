"""One ``hitl serve`` process holds 1,000 live streams at once, and each receives an event published after
they all connected; ``hitl serve --workers 2`` serves the API and streams from two processes.

Real processes: the embedded Redis server, a worker and beat on SQLite, ``hitl serve``; the streams are
1,000 concurrent HTTP connections on the loopback interface (httpx's async client).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests.support import ApiServer, Stack, api_server

pytestmark = pytest.mark.integration

STREAMS = 1000


@pytest.fixture(scope="module")
def database_url() -> str:
    """SQLite only: the streams' limit is the server's, not the database's."""
    return ""


async def _inbox_streams(url: str, key: str, count: int) -> tuple[float, float, list[str]]:
    """Open ``count`` inbox streams, start a run once all are connected, and return (seconds to connect,
    seconds from the start to the last stream's event, what each stream received of the run)."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=10)
    timeout = httpx.Timeout(120, pool=None)
    connected = 0
    all_connected = asyncio.Event()
    target: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as client:

        async def stream() -> str:
            nonlocal connected
            async with client.stream("GET", "/api/v1/approvals/events") as res:
                assert res.status_code == 200, await res.aread()
                connected += 1
                if connected == count:
                    all_connected.set()
                async for line in res.aiter_lines():
                    if line.startswith("data: "):
                        event: dict[str, Any] = json.loads(line.removeprefix("data: "))
                        if event["run_id"] == await target and event["kind"] == "waiting_for_input":
                            return str(event["kind"])
            return "ended without the event"

        began = time.monotonic()
        tasks = [asyncio.create_task(stream()) for _ in range(count)]
        await asyncio.wait_for(all_connected.wait(), 180)
        connect_seconds = time.monotonic() - began
        started = time.monotonic()
        res = await client.post("/api/v1/runs", json={"workflow": "gate", "payload": {"n": 1000}})
        assert res.status_code == 201, res.text
        target.set_result(res.json()["run_id"])
        got = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        return connect_seconds, time.monotonic() - started, got


def test_one_server_process_holds_1000_streams_and_each_gets_its_event(api: ApiServer) -> None:
    key = api.key("viewer", "read", "start")
    connect_seconds, deliver_seconds, got = asyncio.run(_inbox_streams(api.url, key, STREAMS))
    assert got == ["waiting_for_input"] * STREAMS
    print(f"\n{STREAMS} streams connected in {connect_seconds:.1f}s; all had the event {deliver_seconds:.1f}s later")
    # The server is still responsive after the streams closed.
    assert api.client().get("/api/v1/health").status_code == 200


def test_serve_with_two_workers_serves_the_api_and_live_streams(stack: Stack) -> None:
    with api_server(stack, "--workers", "2") as server:
        key = server.key("viewer2", "read", "start")
        _, _, got = asyncio.run(_inbox_streams(server.url, key, 20))
        assert got == ["waiting_for_input"] * 20
        assert server.log.read_text().count("Application startup complete") == 2  # two server processes
