"""The users of the load test (bench/load.py runs this file with ``locust --headless``).

Each user is a web app with an API key (``HITL_LOAD_KEY``): it starts ``bench-pause-plain`` runs (3 tasks, a
wait, 2 tasks), reads the inbox, its runs and their approvals, and approves the approvals of the runs it started
(never another user's, so no decision races another and every 409 would be a real error). Weights: starts 2,
reads 5, decisions 2. Every non-2xx answer counts as an error.
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import HttpUser, between, task

WORKFLOW = "bench-pause-plain"
THINK = float(os.environ.get("HITL_LOAD_THINK", "0.1"))


class WebApp(HttpUser):
    wait_time = between(0, 2 * THINK)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ['HITL_LOAD_KEY']}"
        self.runs: list[str] = []  # runs this user started and has not yet decided
        self.approvals: list[str] = []  # approvals of this user's runs, seen pending

    @task(2)
    def start_run(self) -> None:
        res = self.client.post("/api/v1/runs", json={"workflow": WORKFLOW, "payload": {"n": random.random()}})
        if res.status_code == 201:
            self.runs.append(res.json()["run_id"])

    @task(2)
    def list_inbox(self) -> None:
        self.client.get("/api/v1/approvals", params={"limit": 20}, name="/api/v1/approvals?limit=20")

    @task(2)
    def read_run(self) -> None:
        if self.runs:
            run_id = random.choice(self.runs)
            self.client.get(f"/api/v1/runs/{run_id}", name="/api/v1/runs/{id}")

    @task(1)
    def find_approval(self) -> None:
        """Look up the pending approval of this user's oldest undecided run (it may not be waiting yet)."""
        if not self.runs:
            return
        run_id = self.runs[0]
        res = self.client.get("/api/v1/approvals", params={"run_id": run_id}, name="/api/v1/approvals?run_id={id}")
        items: list[dict[str, Any]] = res.json()["items"] if res.status_code == 200 else []
        if items:
            self.runs.pop(0)
            self.approvals.append(items[0]["id"])

    @task(2)
    def approve(self) -> None:
        if self.approvals:
            approval_id = self.approvals.pop(0)
            self.client.post(
                f"/api/v1/approvals/{approval_id}/approve",
                json={"comment": "load test"},
                name="/api/v1/approvals/{id}/approve",
            )
