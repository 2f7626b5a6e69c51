"""A load test of the HTTP front door: locust users against ``hitl serve`` with real Celery workers on PostgreSQL.

    python bench/load.py                     # 45 s, 20 users
    python bench/load.py --seconds 60 --users 40

Starts what bench/run.py starts (a throwaway PostgreSQL server, the embedded Redis broker, a 2-process prefork
``celery worker`` and ``celery beat``), then ``hitl serve`` on 127.0.0.1 and ``locust --headless`` on the same
loopback interface for a bounded time. The users (bench/locustfile.py) start runs, read, and approve the
approvals of their own runs. Prints requests/s, p50/p99 (ms) and errors per endpoint and in all, what the
workers did with the runs, and the machine's load; writes ``bench/results/load.json``. Needs
``pip install -e '.[bench,postgres]'``. Not a test: nothing here asserts, the figures are for reading.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

Row = dict[str, Any]
WORKFLOW = "bench-pause-plain"


def locust_rows(stats_csv: Path) -> list[Row]:
    """The endpoints of locust's ``*_stats.csv`` (and its ``Aggregated`` line, last) as rows."""
    rows = []
    with stats_csv.open(newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append(
                {
                    "endpoint": f"{r['Type']} {r['Name']}".strip() if r["Name"] != "Aggregated" else "all",
                    "requests": int(r["Request Count"]),
                    "errors": int(r["Failure Count"]),
                    "rps": float(r["Requests/s"]),
                    "p50_ms": float(r["50%"]) if r["50%"] != "N/A" else None,
                    "p99_ms": float(r["99%"]) if r["99%"] != "N/A" else None,
                    "max_ms": float(r["Max Response Time"]),
                }
            )
    return rows


def run_counts() -> dict[str, int]:
    """How many load-test runs are in each status, and how many approvals were decided."""
    from sqlalchemy import func, select

    from approvals.models import Approval, Run
    from hitl.infra.db import session_scope

    with session_scope() as s:
        by_status = dict(
            s.execute(select(Run.status, func.count()).where(Run.workflow == WORKFLOW).group_by(Run.status)).all()
        )
        decided = s.scalar(
            select(func.count())
            .select_from(Approval)
            .join(Run, Run.id == Approval.run_id)
            .where(Run.workflow == WORKFLOW, Approval.status == "approved")
        )
    counts = {str(getattr(k, "value", k)): int(v) for k, v in by_status.items()}
    counts["approved"] = int(decided or 0)
    return counts


def drain(timeout: float = 60) -> dict[str, int]:
    """Wait until every approved run has finished (its continuation ran on the workers), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    counts = run_counts()
    while counts.get("succeeded", 0) < counts["approved"] and time.monotonic() < deadline:
        time.sleep(0.5)
        counts = run_counts()
    return counts


def run_locust(url: str, key: str, args: argparse.Namespace, out: Path) -> tuple[int, str]:
    exe = Path(sys.executable).with_name("locust")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "locust"]
    argv += [
        "-f",
        str(ROOT / "bench" / "locustfile.py"),
        "--headless",
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        f"{args.seconds}s",
        "--stop-timeout",
        "10",
        "--host",
        url,
        "--csv",
        str(out / "load"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = {**os.environ, "HITL_LOAD_KEY": key, "HITL_LOAD_THINK": str(args.think)}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, timeout=args.seconds + 120)
    return proc.returncode, proc.stdout + proc.stderr


def print_table(rows: list[Row]) -> None:
    print(f"\n{'endpoint':42} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        p50 = f"{r['p50_ms']:.0f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.0f}" if r["p99_ms"] is not None else "-"
        print(
            f"{r['endpoint'][:42]:42} {r['requests']:>9} {r['errors']:>7} {r['rps']:>8.1f} {p50:>8} {p99:>8} "
            f"{r['max_ms']:>8.0f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=45, help="how long locust runs (default 45)")
    parser.add_argument("--users", type=int, default=20, help="concurrent users (default 20)")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second (default 10)")
    parser.add_argument("--think", type=float, default=0.1, help="mean pause of a user between requests, s")
    args = parser.parse_args()

    from tests.pg import start_postgres
    from tests.support import api_server, running_stack

    started = time.time()
    pg = start_postgres()
    home = Path(tempfile.mkdtemp(prefix="hitl-load-"))
    try:
        with (
            running_stack(
                home, HITL_DATABASE_URL=pg.create_database("load"), HITL_WORKFLOW_MODULES='["tasks", "bench.flows"]'
            ) as stack,
            api_server(stack) as api,
        ):
            key = api.key("load", "read", "start", "decide")
            print(f"hitl serve at {api.url}; locust: {args.users} users for {args.seconds} s...", flush=True)
            load_before = os.getloadavg()
            psutil.cpu_percent(interval=None)
            code, output = run_locust(api.url, key, args, home)
            cpu = psutil.cpu_percent(interval=None)
            load_after = os.getloadavg()
            stats = home / "load_stats.csv"
            if not stats.exists():
                print(output, file=sys.stderr)
                return 1
            rows = locust_rows(stats)
            if code != 0 or not rows[-1]["requests"]:
                print(f"locust exited {code}:\n{output[-4000:]}", file=sys.stderr)
            failures = home / "load_failures.csv"
            failed = failures.read_text() if failures.exists() else ""
            counts = drain()
    finally:
        pg.stop()
    print_table(rows)
    print(f"\nruns: {json.dumps(counts)}")
    print(
        f"machine: {os.cpu_count()} cpus, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
        f" (1 min); cpu busy {cpu:.0f}% during the run (all processes, other users' included)"
    )
    if len(failed.splitlines()) > 1:
        print(f"\nfailures:\n{failed}")
    out = {
        "when": datetime.now(UTC).isoformat(),
        "seconds": args.seconds,
        "users": args.users,
        "think_seconds": args.think,
        "locust_exit_code": code,
        "endpoints": rows,
        "runs": counts,
        "failures_csv": failed,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_1m_before": round(load_before[0], 2),
            "load_average_1m_after": round(load_after[0], 2),
            "cpu_busy_percent": cpu,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "wall_seconds": round(time.time() - started, 1),
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "load.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote bench/results/load.json ({out['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
