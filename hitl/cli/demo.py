"""``hitl demo``: the sample workflows end to end on the embedded default, checked.

It runs real processes: the embedded Redis server, a ``celery worker`` and ``celery beat``. Decisions go
through :func:`hitl.core.completion.decide`, the function behind ``hitl approve`` and ``hitl reject``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from importlib import resources
from pathlib import Path
from typing import Any

from rich.table import Table

from approvals.errors import InvalidPayload
from approvals.status import ApprovalStatus
from hitl.cli.plain import APPROVAL_COLUMNS, approval_cells, print_table
from hitl.cli.render import console, show_run
from hitl.core.completion import decide
from hitl.core.groups import add_member
from hitl.core.runs import start
from hitl.core.views import get_run, list_approvals
from hitl.infra import broker, db
from hitl.infra.celery_app import reconfigure
from hitl.infra.procs import start_beat, start_worker, wait_ready
from hitl.infra.settings import get_settings

#: What the demo's processes import: the sample workflows that ship with hitl.
DEMO_WORKFLOW_MODULES = ["hitl.examples"]


def default_examples() -> Path:
    """The folder of the sample workflows' plan and payloads, inside the installed package (any directory works)."""
    return Path(str(resources.files("hitl.examples")))


def load_plan(examples: Path) -> list[dict[str, Any]]:
    """Read ``examples/demo.json``; a payload written ``"@file.json"`` is read from that file beside it.

    Raises:
        InvalidPayload: a file is missing or not valid JSON.
    """
    try:
        plan = json.loads((examples / "demo.json").read_text())
        runs: list[dict[str, Any]] = plan["runs"]
        for entry in runs:
            if isinstance(entry["payload"], str) and entry["payload"].startswith("@"):
                entry["payload"] = json.loads((examples / entry["payload"][1:]).read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidPayload(f"cannot read the demo plan in {examples}: {exc}") from exc
    return runs


def load_groups(examples: Path) -> dict[str, list[str]]:
    """Read the approver groups of ``examples/demo.json`` (``"groups"``: name → members).

    Raises:
        InvalidPayload: the file is missing or not valid JSON.
    """
    try:
        groups: dict[str, list[str]] = json.loads((examples / "demo.json").read_text()).get("groups", {})
    except (OSError, ValueError) as exc:
        raise InvalidPayload(f"cannot read the demo plan in {examples}: {exc}") from exc
    return groups


def _isolate(home: Path) -> None:
    """Point this process (and the children it starts) at a fresh embedded home for the demo."""
    for var in ("HITL_DATABASE_URL", "HITL_BROKER_URL", "HITL_CELERY_CONFIG", "HITL_RESULT_BACKEND"):
        os.environ.pop(var, None)
    os.environ.update(
        HITL_HOME=str(home),
        HITL_WORKFLOW_MODULES=json.dumps(DEMO_WORKFLOW_MODULES),
        HITL_SWEEP_INTERVAL="1",
        HITL_RELAY_INTERVAL="2",
        HITL_RELAY_GRACE="1",
    )
    get_settings.cache_clear()
    db.reset_engine()
    reconfigure()  # this process's Celery app publishes to the demo's broker, not the one of the home it started in
    broker.stop_broker()  # a broker left running by an earlier demo
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)


def _drive(plan: list[dict[str, Any]], run_ids: list[str], timeout: float) -> bool:
    """Apply each run's scripted decisions as its approvals appear; return True if every run finished."""
    queues = {rid: deque(entry["decisions"]) for rid, entry in zip(run_ids, plan, strict=True)}
    shown = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = list_approvals(status=ApprovalStatus.PENDING, limit=1000)
        runs = {rid: get_run(rid) for rid in run_ids}
        waiting = {a.run_id for a in pending}
        if not shown and all(r.status.terminal or rid in waiting for rid, r in runs.items()):
            console.print("\n[bold]Pending approvals[/] (hitl approvals list)")
            print_table(APPROVAL_COLUMNS, [approval_cells(a.model_dump(mode="json")) for a in pending])
            shown = True
        if shown:
            for a in pending:
                queue = queues.get(a.run_id) if a.run_id else None
                if queue:
                    d = queue.popleft()
                    verb = "approve" if d["outcome"] == "approved" else "reject"
                    flag = "--comment" if verb == "approve" else "--reason"
                    console.print(
                        f"$ hitl {verb} {a.id} --by {d['by']} {flag} {json.dumps(d['comment'])}", markup=False
                    )
                    decide(a.id, d["outcome"], actor=d["by"], comment=d["comment"], channel="cli")
        if all(r.status.terminal for r in runs.values()):
            return True
        time.sleep(0.2)
    return False


def _report(plan: list[dict[str, Any]], run_ids: list[str]) -> bool:
    summary = Table(title="hitl demo: outcomes", box=None, pad_edge=False)
    for col in ("RUN", "SCENARIO", "EXPECTED", "FINAL", "OK"):
        summary.add_column(col)
    all_ok = True
    for entry, rid in zip(plan, run_ids, strict=True):
        run = get_run(rid)
        console.rule(f"{entry['name']}")
        show_run(run)
        ok = run.status.value == entry["expect"]
        applied = (run.result or {}).get("applied") if isinstance(run.result, dict) else None
        if "rows_changed" in entry:
            ok = ok and (bool(applied) == entry["rows_changed"])
        all_ok = all_ok and ok
        summary.add_row(rid, entry["name"], entry["expect"], run.status.value, "yes" if ok else "[red]NO[/]")
    console.print()
    console.print(summary)
    return all_ok


def run_demo(examples: str | None, timeout: float) -> int:
    """Run the demo (see ``hitl demo --help``); return the process exit code (0: every run as expected).

    ``examples``: a folder with ``demo.json`` and its payloads; None for the plan that ships with hitl."""
    home = get_settings().home_dir / "demo"
    folder = Path(examples) if examples else default_examples()
    plan = load_plan(folder)
    _isolate(home)
    console.rule("hitl demo")
    from hitl.infra.redact import mask_url

    url = mask_url(get_settings().resolved_database_url)
    console.print(f"embedded broker {mask_url(broker.ensure_broker())}\ndatabase {url}")
    db.get_engine()
    for group, members in load_groups(folder).items():
        for member in members:
            add_member(group, member)
        console.print(f"$ hitl groups add {group} {' '.join(members)}")
    worker = start_worker(home / "worker.log", concurrency=2)
    beat = start_beat(home / "beat.log")
    try:
        wait_ready(worker)
        console.print(f"worker and beat running (logs in {home})\n")
        run_ids = []
        for i, entry in enumerate(plan):
            rid = start(entry["workflow"], entry["payload"], idempotency_key=f"demo-{i}")
            console.print(f"$ hitl start {entry['workflow']}  -> run {rid}  ({entry['name']})")
            run_ids.append(rid)
        finished = _drive(plan, run_ids, timeout)
        ok = _report(plan, run_ids)
        if not finished:
            console.print(f"[red]not every run finished within {timeout:.0f}s[/]")
        console.print("[green]demo passed[/]" if ok and finished else "[red]demo failed[/]")
        return 0 if ok and finished else 1
    finally:
        beat.stop()
        worker.stop()
        broker.stop_broker()
        console.print(f"stopped worker, beat and broker; the demo's database stays in {home}")
