"""Waiting holds no worker and no broker state: only database rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import hitl
from approvals.status import ApprovalStatus, RunStatus
from tests.flows import effects, ping
from tests.support import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

WAITING_RUNS = 200
PINGS = 20


@pytest.fixture(scope="module")
def solo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker process executing one task at a time (``--pool solo``), no beat."""
    with running_stack(tmp_path_factory.mktemp("solo"), pool="solo", concurrency=1, beat=False) as s:
        yield s


def redis_client(home: Path) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(home / "redis.sock"))


def test_200_waiting_runs_leave_a_single_process_worker_free(solo_stack: Stack) -> None:
    run_ids = [hitl.start("gate", {"i": i}) for i in range(WAITING_RUNS)]
    wait_for(
        lambda: len(hitl.list_approvals(workflow="gate", limit=10_000)) == WAITING_RUNS,
        timeout=120,
        what=f"{WAITING_RUNS} pending approvals",
    )
    assert {hitl.get_run(r).status for r in run_ids[:: WAITING_RUNS // 10]} == {RunStatus.WAITING}

    # The broker holds nothing for them: no queued message, no unacknowledged (reserved) message.
    client = redis_client(solo_stack.home)
    assert client.llen("celery") == 0
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
    # What remains is kombu's bookkeeping of exchange bindings, the same whatever number of runs waits, and
    # at times a worker-event message in flight in Celery's own queue for worker events (``celeryev.<uuid>``,
    # the worker's gossip consumer drains it). No key holds anything of the waiting runs.
    keys = {k.decode() for k in client.keys()}  # noqa: SIM118 - the Redis KEYS command
    assert all(k.startswith(("_kombu.binding", "celeryev.")) or k == "unacked_mutex" for k in keys), keys
    held = b"".join(
        b"".join(client.lrange(k, 0, -1)) for k in keys if k.startswith("celeryev.") and client.type(k) == b"list"
    )
    assert not [r for r in run_ids if r.encode() in held]

    # The one worker process still executes other work while all 200 wait.
    for n in range(PINGS):
        ping.delay(n)
    wait_for(lambda: len(effects(step="ping")) == PINGS, timeout=60, what=f"{PINGS} pings executed")
    assert sorted(e.detail["n"] for e in effects(step="ping")) == list(range(PINGS))
    pending = hitl.list_approvals(status=ApprovalStatus.PENDING, limit=10_000)
    assert len(pending) == WAITING_RUNS

    # And the waits are still live: deciding one resumes its run on the same worker.
    hitl.approve(pending[0].id, actor="alice")
    assert wait_for(lambda: hitl.get_run(pending[0].run_id).status.terminal, timeout=30, what="resumed run")
