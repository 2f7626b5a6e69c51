"""Where a run's CPU goes: hitl against plain Celery, per process group, in interleaved rounds.

    python bench/cpu.py                   # SQLite and PostgreSQL, 300 runs a round, 3 rounds
    python bench/cpu.py --db postgresql --runs 600 --rounds 5

Throughput ratios (``bench/run.py``) say how far hitl is from plain Celery; this says where the difference is
spent. It starts what ``bench/run.py`` starts (the embedded Redis server, a 2-process prefork worker, SQLite or
a throwaway PostgreSQL server), runs each workload to its end, and reads the CPU time (user + system, from
``/proc`` through psutil) of every process before and after: this client, the worker (main process and pool),
Redis and PostgreSQL. It prints milliseconds of CPU per run for each group and workload, and hitl's extra over
its plain-Celery twin. Wall time is not what it measures: CPU per run is steadier on a shared machine, and on a
saturated 2-core machine throughput is about the inverse of it. Not part of the tests.

Workloads (``bench/flows.py``): ``plain-3`` (a chain of 3 plain tasks), ``nowait-plain`` (the same as a hitl
workflow), ``nowait-steps`` (3 ``@hitl.step`` steps), ``pause-plain`` (3 plain tasks and a wait, until the
approval is stored) and ``decide`` (approving those waits, until their 2-task continuations end), against
``plain-2`` (a chain of 2 plain tasks).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

GROUPS = ("client", "worker", "redis", "postgres")


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def cpu_by_group(worker_pid: int) -> dict[str, float]:
    """Seconds of CPU used so far by each group (processes that exited meanwhile are not counted)."""
    out = dict.fromkeys(GROUPS, 0.0)
    me = psutil.Process()
    out["client"] = _cpu(me)
    worker = psutil.Process(worker_pid)
    out["worker"] = _cpu(worker) + sum(_cpu(p) for p in worker.children(recursive=True))
    for p in psutil.process_iter(["name"]):
        name = p.info["name"] or ""
        if name.startswith("redis-server"):
            out["redis"] += _cpu(p)
        elif name.startswith("postgres"):
            out["postgres"] += _cpu(p)
    return out


def measure(worker_pid: int, n: int, run: Callable[[], None]) -> dict[str, float]:
    """Milliseconds of CPU per run, by group, for ``run()`` doing ``n`` runs to their end."""
    before = cpu_by_group(worker_pid)
    run()
    time.sleep(0.3)  # the last receipts and log lines
    after = cpu_by_group(worker_pid)
    return {g: (after[g] - before[g]) * 1000 / n for g in GROUPS}


def workloads(n: int) -> dict[str, Callable[[], None]]:
    from celery import chain
    from sqlalchemy import func, select

    import hitl
    from approvals.models import Approval, Run
    from approvals.status import ApprovalStatus, RunStatus
    from bench.flows import DONE_KEY, _redis, plain_last, plain_step
    from bench.run import wait_until
    from hitl.infra.db import session_scope

    def count(stmt: Any) -> int:
        with session_scope() as s:
            return int(s.scalar(stmt) or 0)

    def plain(tasks: int) -> Callable[[], None]:
        def go() -> None:
            _redis().set(DONE_KEY, 0)
            for i in range(n):
                chain(*[plain_step.s(i) if k == 0 else plain_step.s() for k in range(tasks - 1)], plain_last.s()).delay()
            wait_until(lambda: int(_redis().get(DONE_KEY) or 0) >= n, interval=0.1)

        return go

    def runs(workflow: str, status: RunStatus) -> Any:
        return select(func.count()).select_from(Run).where(Run.workflow == workflow, Run.status == status)

    pending = (
        select(Approval.id)
        .join(Run, Run.id == Approval.run_id)
        .where(Run.workflow == "bench-pause-plain", Approval.status == ApprovalStatus.PENDING)
    )

    def started(workflow: str, done: Any) -> Callable[[], None]:
        def go() -> None:
            target = count(done) + n
            for i in range(n):
                hitl.start(workflow, i)
            wait_until(lambda: count(done) >= target, interval=0.1)

        return go

    def decide() -> None:
        with session_scope() as s:
            ids = [a for (a,) in s.execute(pending.limit(n))]
        done = runs("bench-pause-plain", RunStatus.SUCCEEDED)
        target = count(done) + len(ids)
        for a in ids:
            hitl.approve(a, actor="bench")
        wait_until(lambda: count(done) >= target, interval=0.1)

    waiting = select(func.count()).select_from(pending.subquery())
    return {
        "plain-3": plain(3),
        "nowait-plain": started("bench-nowait-plain", runs("bench-nowait-plain", RunStatus.SUCCEEDED)),
        "nowait-steps": started("bench-nowait", runs("bench-nowait", RunStatus.SUCCEEDED)),
        "pause-plain": started("bench-pause-plain", waiting),
        "plain-2": plain(2),
        "decide": decide,
    }


#: Each hitl workload and the plain-Celery workload it is compared with.
TWINS = {"nowait-plain": "plain-3", "nowait-steps": "plain-3", "pause-plain": "plain-3", "decide": "plain-2"}


def run_db(db: str, n: int, rounds: int, pg: Any) -> dict[str, list[dict[str, float]]]:
    from tests.support import running_stack

    home = Path(tempfile.mkdtemp(prefix=f"hitl-cpu-{db}-"))
    url = pg.create_database("cpu") if db == "postgresql" else ""
    from bench.flows import _redis

    _redis.cache_clear()
    results: dict[str, list[dict[str, float]]] = {}
    with running_stack(
        home, beat=False, HITL_DATABASE_URL=url, HITL_WORKFLOW_MODULES='["tasks", "bench.flows"]'
    ) as stack:
        pid = stack.worker.proc.pid
        loads = workloads(n)
        for name in ("plain-3", "nowait-plain"):  # warm-up: imports, connections, first touch of tables
            loads[name]()
        for r in range(rounds):
            for name, load in loads.items():
                results.setdefault(name, []).append(measure(pid, n, load))
            print(f"  {db}: round {r + 1} of {rounds} done", flush=True)
    return results


def report(db: str, results: dict[str, list[dict[str, float]]]) -> None:
    def med(name: str, group: str) -> float:
        return statistics.median(r[group] for r in results[name])

    print(f"\n{db}: ms of CPU per run (median of {len(next(iter(results.values())))} rounds)")
    print(f"{'workload':14} " + " ".join(f"{g:>9}" for g in GROUPS) + f" {'total':>9} {'extra':>9}  vs")
    for name in results:
        values = [med(name, g) for g in GROUPS]
        total = sum(values)
        twin = TWINS.get(name)
        extra = f"{total - sum(med(twin, g) for g in GROUPS):9.2f}" if twin else " " * 9
        print(f"{name:14} " + " ".join(f"{v:9.2f}" for v in values) + f" {total:9.2f} {extra}  {twin or ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--runs", type=int, default=300, help="runs per workload and round (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    from tests.pg import start_postgres

    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    pg = start_postgres() if "postgresql" in dbs else None
    try:
        for db in dbs:
            print(f"measuring on {db}...", flush=True)
            report(db, run_db(db, args.runs, args.rounds, pg))
    finally:
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
