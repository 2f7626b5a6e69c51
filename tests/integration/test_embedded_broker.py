"""The embedded broker with a real Redis server: one server per home, even when it is too busy to answer.

A server that did not answer a PING in time used to be taken for a stopped one: a second server took over the
socket's path, processes already connected (worker, beat) went on with the first and new ones published to the
second, so every run started afterwards stalled.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from approvals.errors import BrokerUnavailable
from hitl.infra import broker
from tests.support import base_env, point_process_at, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    point_process_at(base_env(tmp_path))
    yield tmp_path
    pid = broker.server_pid(tmp_path)
    if pid is not None:
        os.kill(pid, signal.SIGCONT)
    broker.stop_broker()
    point_process_at({})


def _redis_servers_of(home: Path) -> list[int]:
    """Pids of the Redis servers running with ``home`` as their folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"redis-server" in cmdline and str(home / "redis.sock").encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_a_server_that_does_not_answer_is_waited_for_and_never_started_twice(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = broker.ensure_broker()
    pid = broker.server_pid(home)
    assert pid is not None and _redis_servers_of(home) == [pid]
    monkeypatch.setattr(broker, "START_TIMEOUT_SECONDS", 1.0)
    os.kill(pid, signal.SIGSTOP)  # alive, and answers nothing (as a server too busy to answer in time)
    try:
        with pytest.raises(BrokerUnavailable, match=f"pid {pid}.* does not answer"):
            broker.ensure_broker()
        assert _redis_servers_of(home) == [pid]  # no second server took the socket's path
    finally:
        os.kill(pid, signal.SIGCONT)
    assert broker.ensure_broker() == url
    assert broker.is_running() and _redis_servers_of(home) == [pid]


def test_a_killed_server_is_replaced(home: Path) -> None:
    broker.ensure_broker()
    first = broker.server_pid(home)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: broker.server_pid(home) is None, timeout=10, what="the killed server to be gone")
    broker.ensure_broker()
    second = broker.server_pid(home)
    assert second is not None and second != first
    assert broker.is_running() and _redis_servers_of(home) == [second]


def test_a_stale_pid_file_naming_another_process_does_not_stop_a_start(home: Path) -> None:
    (home / "redis.pid").write_text(f"{os.getpid()}\n")  # a live process, but not a Redis server
    started = time.monotonic()
    broker.ensure_broker()
    assert broker.is_running() and time.monotonic() - started < broker.START_TIMEOUT_SECONDS
    pid = broker.server_pid(home)
    assert pid is not None and pid != os.getpid()
