"""hitl installed into a Celery project that has its own ``tasks.py`` and ``celeryconfig.py`` (the names Celery's
first-steps guide gives them): both stay the project's, and hitl's worker runs with hitl's settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_for

pytestmark = pytest.mark.acceptance

TASKS = '''
"""The project's own Celery tasks (not hitl's)."""
from celery import shared_task

MARKER = "the project's own tasks module"


@shared_task(name="proj.add")
def add(x, y):
    return x + y
'''

CELERYCONFIG = '''
"""The project's own Celery settings, for its own app. Were hitl to read them, its worker would consume from an
in-memory broker nobody sends to, and acknowledge messages before running them."""
broker_url = "memory://"
task_acks_late = False
imports = ["tasks"]
'''

FLOWS = '''
"""The project's workflow: its own task, a wait, and a task reporting the settings it ran with."""
from celery import current_app, shared_task

import hitl
import tasks


@shared_task(name="proj.probe")
def probe(decision):
    return {
        "acks_late": current_app.conf.task_acks_late,
        "broker": current_app.conf.broker_url.split(":", 1)[0],
        "subject": decision["subject"],
        "tasks_module": tasks.__file__,
        "marker": tasks.MARKER,
    }


@hitl.workflow("proj-flow")
def flow(payload):
    """Add two numbers, have someone check the sum, report."""
    return tasks.add.s(payload["x"], payload["y"]) | hitl.wait_for_approval.s(key="check", timeout="1h") | probe.s()
'''


def _hitl(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hitl", *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_celery_projects_own_tasks_and_celeryconfig_stay_its_own(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    for name, text in (("tasks.py", TASKS), ("celeryconfig.py", CELERYCONFIG), ("flows.py", FLOWS)):
        (project / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_") and k != "PYTHONPATH"}
    env.update(HITL_HOME=str(tmp_path / "home"), HITL_WORKFLOW_MODULES='["flows"]', HITL_SWEEP_INTERVAL="1")

    # The project's Python sees its own modules, whatever hitl installed.
    own = subprocess.run(
        [sys.executable, "-c", "import tasks, celeryconfig; print(tasks.MARKER); print(celeryconfig.__file__)"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert own == ["the project's own tasks module", str(project / "celeryconfig.py")]

    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "hitl", "worker", "-c", "1"],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: " ready." in (tmp_path / "worker.log").read_text(errors="replace"),
            timeout=90,
            what="hitl's worker ready in the project",
        )
        started = _hitl(project, env, "start", "proj-flow", "--payload", '{"x": 2, "y": 3}')
        assert started.returncode == 0, started.stderr
        run_id = started.stdout.strip()

        def pending() -> list[dict[str, Any]] | None:
            res = _hitl(project, env, "approvals", "list", "--run", run_id, "--json")
            found: list[dict[str, Any]] = json.loads(res.stdout) if res.returncode == 0 else []
            return found or None

        [approval] = wait_for(pending, timeout=60, what="the wait's approval")
        assert approval["subject"] == 5  # the project's own task ran in hitl's worker
        assert _hitl(project, env, "approve", approval["id"], "--by", "alice").returncode == 0

        def finished() -> dict[str, Any] | None:
            run: dict[str, Any] = json.loads(_hitl(project, env, "runs", "show", run_id, "--json").stdout)
            return run if run["status"] in ("succeeded", "failed") else None

        run = wait_for(finished, timeout=60, what="the run's end")
        assert run["status"] == "succeeded", run
        assert run["result"] == {
            "acks_late": True,  # hitl's settings, not the project's celeryconfig
            "broker": "redis+socket",  # the embedded broker hitl configured, not the project's memory://
            "subject": 5,
            "tasks_module": str(project / "tasks.py"),
            "marker": "the project's own tasks module",
        }
        # hitl's beat schedule names hitl's jobs only: nothing of it looks for a module named `tasks`.
        show = "from hitl import app; print(sorted(e['task'] for e in app.conf.beat_schedule.values()))"
        jobs = subprocess.run(
            [sys.executable, "-c", show], cwd=project, env=env, capture_output=True, text=True, check=True
        ).stdout
        assert "tasks." not in jobs and "hitl.sweep_deadlines" in jobs
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        _hitl(project, env, "broker", "stop")
        time.sleep(0.2)
