"""Flower shows each task of a run live, journaled step or plain task, with the run id as its root id."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from tests.support import Stack, wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_flower_lists_steps_with_their_run_id(stack: Stack) -> None:
    port = free_port()
    env = {**os.environ, **stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    with open(stack.home / "flower.log", "wb") as log:
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "hitl.app", "flower", f"--port={port}", "--address=127.0.0.1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def tasks() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=2) as r:
                    return dict(json.load(r))
            except OSError:
                return None

        wait_for(lambda: tasks() is not None, timeout=30, what="flower's API")
        run_id = stack.cli("start", "gate", "--payload", '{"via": "flower"}', "--json").json()["run_id"]
        plain_run = stack.cli("start", "plain", "--payload", '{"topic": "flower"}', "--json").json()["run_id"]

        def tasks_of(run: str) -> set[str]:
            return {t["name"] for t in (tasks() or {}).values() if t.get("root_id") == run}

        assert wait_for(lambda: "tests.prepare" in tasks_of(run_id), timeout=30, what="the run's steps in flower")
        assert wait_for(
            lambda: "tests.plain.draft" in tasks_of(plain_run), timeout=30, what="the plain run's task in flower"
        )
    finally:
        flower.terminate()
        flower.wait(15)
