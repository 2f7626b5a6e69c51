"""Helpers shared by the integration and acceptance tiers: a real stack of processes, and waiting on conditions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def point_process_at(env: dict[str, str]) -> None:
    """Make this (test) process use exactly the settings in ``env``: same database and broker as the services."""
    for var in [v for v in os.environ if v.startswith("HITL_")]:
        del os.environ[var]
    os.environ.update(env)
    from hitl import db
    from hitl.app import reconfigure
    from hitl.settings import get_settings

    get_settings.cache_clear()
    db.reset_engine()
    reconfigure()


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a test stack rooted at ``home``: fast sweeps and relays, the test workflows loaded."""
    env = {
        "HITL_HOME": str(home),
        "HITL_SWEEP_INTERVAL": "0.5",
        "HITL_RELAY_INTERVAL": "1",
        "HITL_RELAY_GRACE": "1",
        "HITL_WORKFLOW_MODULES": '["tasks", "tests.flows"]',
        "PYTHONPATH": str(ROOT),
    }
    env.update(extra)
    return env


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def hitl_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
    """Run the ``hitl`` command as a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "hitl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Stack:
    """A running broker, worker and beat sharing one HITL_HOME."""

    home: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 60) -> CliResult:
        return hitl_cli(*args, env=self.env, timeout=timeout)


@contextmanager
def running_stack(
    home: Path, *, concurrency: int = 2, pool: str = "prefork", beat: bool = True, **env_extra: str
) -> Iterator[Stack]:
    """Start the embedded broker, a real ``celery worker`` and (optionally) ``celery beat``; stop them after."""
    env = base_env(home, **env_extra)
    point_process_at(env)
    from hitl import broker, db
    from hitl.procs import start_beat, start_worker, wait_ready

    broker.ensure_broker()
    db.get_engine()
    services = [start_worker(home / "worker.log", concurrency=concurrency, pool=pool)]
    if beat:
        services.append(start_beat(home / "beat.log"))
    try:
        wait_ready(services[0])
        yield Stack(home, env)
    finally:
        for s in services:
            s.stop()
        broker.stop_broker()
        for s in services:
            log = s.log_text()
            if "Traceback" in log:
                sys.stderr.write(f"\n----- {s.name} log ({home}) -----\n{log[-6000:]}\n")
