"""The `hitl` command as a user meets it: help, exit codes, JSON output, and the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, base_env, hitl_cli, wait_for

pytestmark = pytest.mark.acceptance

COMMANDS = [
    [],
    ["start"],
    ["workflows"],
    ["approvals"],
    ["approvals", "list"],
    ["approvals", "show"],
    ["approvals", "link"],
    ["approvals", "token"],
    ["approvals", "create"],
    ["approve"],
    ["reject"],
    ["notifications"],
    ["notifications", "list"],
    ["runs"],
    ["runs", "list"],
    ["runs", "show"],
    ["runs", "cancel"],
    ["worker"],
    ["beat"],
    ["flower"],
    ["dev"],
    ["demo"],
    ["broker"],
    ["broker", "status"],
    ["db"],
    ["db", "upgrade"],
    ["db", "current"],
    ["health"],
    ["sweep"],
    ["relay"],
    ["serve"],
    ["keys"],
    ["keys", "create"],
    ["keys", "list"],
    ["keys", "revoke"],
    ["groups"],
    ["groups", "list"],
    ["groups", "add"],
    ["groups", "remove"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "show"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "hitl")
def test_every_command_has_help(command: list[str]) -> None:
    res = hitl_cli(*command, "--help")
    assert res.code == 0, res.err
    assert "Usage: hitl" in res.out
    assert len(res.out.splitlines()) > 3


def test_help_names_environment_variables() -> None:
    top = hitl_cli("--help").out
    for var in ("HITL_HOME", "HITL_DATABASE_URL", "HITL_BROKER_URL"):
        assert var in top
    assert "HITL_ACTOR" in hitl_cli("approve", "--help").out


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    env = {"HITL_HOME": str(tmp_path)}
    assert hitl_cli("approve", env=env).code == 2  # missing argument
    assert hitl_cli("approve", "abc", env=env).code == 2  # missing --by
    res = hitl_cli("start", "gate", "--payload", "{nope", env=env)
    assert res.code == 2 and res.err.startswith("error: --payload is not valid JSON")
    res = hitl_cli("approvals", "list", "--status", "bogus", env=env)
    assert res.code == 2


def test_unknown_workflow_is_a_clear_error(tmp_path: Path) -> None:
    res = hitl_cli("start", "no-such-flow", env={"HITL_HOME": str(tmp_path)})
    assert res.code == 1
    assert res.err.strip() == "error: no workflow named 'no-such-flow' (registered: none)"  # none by default
    samples = {"HITL_HOME": str(tmp_path), "HITL_WORKFLOW_MODULES": '["hitl.examples"]'}
    res = hitl_cli("start", "no-such-flow", env=samples)
    assert res.code == 1
    assert res.err.strip() == "error: no workflow named 'no-such-flow' (registered: content-review, db-change)"


def test_read_commands_print_json(tmp_path: Path) -> None:
    env = {"HITL_HOME": str(tmp_path), "HITL_WORKFLOW_MODULES": '["hitl.examples"]'}
    assert hitl_cli("approvals", "list", "--json", env=env).json() == []
    assert hitl_cli("runs", "list", "--json", env=env).json() == []
    flows = hitl_cli("workflows", "--json", env=env).json()["workflows"]
    by_name = {f["name"]: f for f in flows}
    assert set(by_name) == {"content-review", "db-change"}
    assert "topic" in by_name["content-review"]["input_schema"]["properties"]
    res = hitl_cli("broker", "status", "--json", env=env)
    assert res.code == 1  # the embedded broker is not running: it does not answer
    assert res.json() == {
        "url": f"redis+socket://{tmp_path / 'redis.sock'}",
        "embedded": True,
        "running": False,
        "reachable": False,
        "problem": "not running",
        "live_events": "redis",
    }


def test_python_dash_m_hitl_is_the_same_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "hitl", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "version" in proc.stdout


def test_demo_runs_end_to_end_from_any_directory_and_cleans_up(tmp_path: Path) -> None:
    """README command 1: real broker, worker and beat; every scripted run ends as expected. Run from a folder with
    nothing of the checkout in it (the sample workflows and their plan ship with the package)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_") and k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "hitl", "--home", str(tmp_path), "demo"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "demo passed" in proc.stdout
    # The demo's own starts and decisions reach its broker at once (not later, through the relay).
    assert "not sent" not in proc.stderr, proc.stderr[-3000:]
    plan = json.loads((ROOT / "hitl" / "examples" / "demo.json").read_text())["runs"]
    assert proc.stdout.count(" yes") >= len(plan)
    for status in ("succeeded", "rejected", "timed_out"):
        assert status in proc.stdout
    # It stopped what it started: the broker no longer answers, no worker or beat of it is left.
    demo_home = tmp_path / "demo"
    assert (
        not (demo_home / "redis.sock").exists()
        or hitl_cli("broker", "status", "--json", env={"HITL_HOME": str(demo_home)}).json()["running"] is False
    )
    assert processes_with_env(f"HITL_HOME={demo_home}") == []


def processes_with_env(entry: str) -> list[int]:
    """Pids of live processes whose environment holds ``entry`` (the demo's worker and beat carry its home)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry.encode() + b"\0" in environ.read_bytes() + b"\0":
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_keys_and_links_from_the_cli(tmp_path: Path) -> None:
    env = {"HITL_HOME": str(tmp_path)}
    assert hitl_cli("keys", "create", env=env).code == 2  # --actor is required
    assert hitl_cli("keys", "create", "--actor", "a", "--scope", "everything", env=env).code == 2
    made = hitl_cli("keys", "create", "--actor", "alice", "--note", "laptop", "--json", env=env)
    assert made.code == 0, made.err
    key = made.json()
    assert key["key"].startswith("hk_") and key["scopes"] == ["decide", "read"] and key["actor"] == "alice"
    listed = hitl_cli("keys", "list", "--json", env=env).json()
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    assert hitl_cli("keys", "revoke", key["id"], env=env).code == 0
    again = hitl_cli("keys", "revoke", key["id"], env=env)
    assert again.code == 1 and "no live API key" in again.err and "Traceback" not in again.err
    missing = hitl_cli("approvals", "link", "nope", "--for", "bob", env=env)
    assert missing.code == 1 and "no approval has id" in missing.err
    assert hitl_cli("approvals", "link", "nope", "--for", "bob", "--action", "explode", env=env).code == 2
    assert hitl_cli("approvals", "token", "nope", env=env).code == 2  # --for is required


def test_dev_delivers_reminders_through_its_notifier_worker(tmp_path: Path) -> None:
    """`hitl dev` as a user runs it: a run's reminder is written by beat and delivered (log notifier)."""
    env = base_env(tmp_path, HITL_REMIND_INTERVAL="0.3", HITL_NOTIFY_INTERVAL="0.3")
    with (tmp_path / "dev.log").open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "hitl", "dev"], env={**env}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        payload = json.dumps({"remind_after": "1s", "timeout": "1h"})
        started = hitl_cli("start", "gate", "--payload", payload, env=env)
        assert started.code == 0, started.err

        def sent() -> list[dict[str, object]]:
            rows = hitl_cli("notifications", "list", "--json", env=env).json()
            return [n for n in rows if n["state"] == "sent"]

        (notice,) = wait_for(sent, timeout=90, what="the reminder delivered")
        assert notice["kind"] == "reminder" and notice["seq"] == 1 and notice["delivered_by"] == ["log"]
        log = (tmp_path / "dev.log").read_text()
        assert f"notice reminder #1 for approval {notice['approval_id']}:" in log
        assert "notify@" in log  # the notifier worker on its own queue
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(60)
        hitl_cli("broker", "stop", env=env)
    assert dev.returncode == 0
