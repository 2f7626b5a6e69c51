"""The pipeline on RabbitMQ (``amqp://``), Celery's most used production broker, on SQLite and PostgreSQL.

A focused subset of the pipeline and API tests runs again here with the broker swapped: start, wait,
approve, reject, timeout, a decision made while the worker is down, and live streams, which then come
from the database (PostgreSQL LISTEN/NOTIFY, or reading SQLite's timeline), not from Redis. Real
processes: a throwaway RabbitMQ node (:mod:`tests.rabbit`), ``celery worker``, ``celery beat``,
``hitl serve`` and the ``hitl`` CLI.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from approvals.status import RunStatus
from tests.flows import effects
from tests.integration.test_api import (
    test_inbox_stream_announces_new_and_resolved_approvals,
    test_run_events_replay_then_follow_live_until_the_run_finishes,
)
from tests.integration.test_pipeline import (
    final,
    start_gate,
    test_approve_resumes_the_continuation_with_the_decision,
    test_deadline_times_out_through_beat_and_a_late_decision_is_refused,
    test_reject_resumes_with_the_rejection,
)
from tests.rabbit import rabbitmq_node
from tests.support import ApiServer, Stack, hitl_cli, running_stack

pytestmark = pytest.mark.integration

# The same tests as in test_pipeline and test_api, collected again here with this module's ``stack``.
__all__ = [
    "test_approve_resumes_the_continuation_with_the_decision",
    "test_deadline_times_out_through_beat_and_a_late_decision_is_refused",
    "test_inbox_stream_announces_new_and_resolved_approvals",
    "test_reject_resumes_with_the_rejection",
    "test_run_events_replay_then_follow_live_until_the_run_finishes",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Stack]:
    """A fresh RabbitMQ node, a 2-process prefork worker and beat, on SQLite and on PostgreSQL."""
    with (
        rabbitmq_node() as node,
        running_stack(
            tmp_path_factory.mktemp("hitl-amqp"), HITL_DATABASE_URL=database_url, HITL_BROKER_URL=node.url
        ) as s,
    ):
        yield s


def test_a_decision_made_while_the_worker_is_down_resumes_the_run_when_it_is_back(stack: Stack) -> None:
    run_id, approval_id = start_gate(stack, note="later")
    with stack.worker_down():
        res = stack.cli("approve", approval_id, "--by", "alice", "--comment", "while down")
        assert res.code == 0, res.err
        assert "resumes" in res.out
        assert effects(run_id, "after") == []  # nothing consumed the continuation: it waits in RabbitMQ
    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED
    [got] = effects(run_id, "after")
    assert (got.detail["outcome"], got.detail["actor"], got.detail["comment"]) == ("approved", "alice", "while down")


def test_health_and_broker_status_see_rabbitmq_up(api: ApiServer) -> None:
    body = api.client().get("/api/v1/health").json()
    assert (body["status"], body["database"], body["broker"]) == ("ok", "ok", "ok")
    res = api.stack.cli("broker", "status", "--json")
    assert res.code == 0, res.err
    status = res.json()
    assert (status["embedded"], status["reachable"], status["problem"]) == (False, True, None)
    assert status["live_events"] == ("postgresql" if "postgresql" in api.stack.env["HITL_DATABASE_URL"] else "database")
    assert "guest:guest" not in res.out  # the password is masked


def test_broker_status_says_an_unreachable_rabbitmq_is_down(stack: Stack) -> None:
    # A port nothing listens on: one line, exit 1, no traceback.
    from tests.pg import free_port

    res = hitl_cli(
        "broker", "status", env={**stack.env, "HITL_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//"}
    )
    assert res.code == 1
    assert "unreachable" in res.out and "Traceback" not in res.out + res.err
