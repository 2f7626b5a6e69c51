"""Tasks and workflows the benchmark runs on a real worker: plain Celery tasks and their hitl twins.

The baseline's last task counts finished chains with a Redis INCR on the broker's server; hitl's completion is
read from its own database. Both do the same trivial work per task.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import redis

import hitl
from hitl.infra.broker import broker_url

DONE_KEY = "bench:plain:done"
#: Figure 3: each first task records (start time - send time) in seconds on this Redis list.
LATENCY_KEY = "bench:latency"


@cache
def _redis() -> redis.Redis:
    url = broker_url()
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


@hitl.app.task(name="bench.plain.step")
def plain_step(x: Any) -> Any:
    return x


@hitl.app.task(name="bench.plain.last")
def plain_last(x: Any) -> Any:
    _redis().incr(DONE_KEY)
    return x


@hitl.app.task(name="bench.plain.latency")
def plain_latency(sent: float) -> None:
    _redis().rpush(LATENCY_KEY, time.time() - sent)


@hitl.app.task(name="bench.plain.resumed")
def latency_task(decision: dict[str, Any]) -> None:
    """The first continuation task (a plain task): records how long after the approve() call it started."""
    _redis().rpush(LATENCY_KEY, time.time() - float(decision["data"]["sent"]))


@hitl.step(name="bench.step")
def step(x: Any) -> Any:
    return x if not isinstance(x, hitl.Decision) else x.outcome.value


@hitl.workflow("bench-pause-plain")
def bench_pause_plain(payload: Any) -> Any:
    """3 plain Celery tasks, a wait, then 2 plain tasks (figures 1 and 2)."""
    return (
        plain_step.s(payload)
        | plain_step.s()
        | plain_step.s()
        | hitl.wait_for_approval.s(key="bench", timeout="1h")
        | plain_step.s()
        | plain_step.s()
    )


@hitl.workflow("bench-nowait-plain")
def bench_nowait_plain(payload: Any) -> Any:
    """3 plain Celery tasks and no wait (figure 6)."""
    return plain_step.s(payload) | plain_step.s() | plain_step.s()


@hitl.workflow("bench-pause")
def bench_pause(payload: Any) -> Any:
    """3 journaled steps, a wait, then a 2-step continuation (figure 1b)."""
    return (
        step.s(payload)
        | step.s()
        | step.s()
        | hitl.wait_for_approval.s(key="bench", timeout="1h")
        | step.s()
        | step.s()
    )


@hitl.workflow("bench-latency")
def bench_latency(payload: Any) -> Any:
    """A plain task, a wait, then a continuation whose first (plain) task records its start latency."""
    return plain_step.s(payload) | hitl.wait_for_approval.s(key="bench", timeout="1h") | latency_task.s()


@hitl.workflow("bench-nowait")
def bench_nowait(payload: Any) -> Any:
    """3 journaled steps and no wait (figure 6b)."""
    return step.s(payload) | step.s() | step.s()
