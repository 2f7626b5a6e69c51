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
                links = [plain_step.s(i) if k == 0 else plain_step.s() for k in range(tasks - 1)]
                chain(*links, plain_last.s()).delay()
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
        work = database_work(n)
    report(db, results)
    report_database_work(db, work, results)
    return results


def database_work(n: int) -> dict[str, dict[str, float]]:
    """What hitl's own writes cost, without Celery: ms of CPU per call in this process and in PostgreSQL.

    Each write goes through the engine's own functions, in this process, with nothing published (the outbox's
    publish is replaced by a no-op for the measurement): ``start`` is ``hitl.start`` of the no-wait workflow
    (validation, compiling its canvas and the start's write), ``wait`` the wait's write (:func:`store_waits`, as the
    worker of the task before the wait makes it), ``end`` a run's end (:func:`end_run`, as the worker of the
    last task makes it) and ``decision`` ``hitl.approve``'s transaction.
    """
    from unittest import mock

    import hitl
    from approvals.status import RunStatus
    from approvals.transitions import end_run
    from bench.flows import bench_pause_plain
    from hitl.core.waiting import store_waits
    from hitl.delivery import outbox
    from hitl.delivery.canvas import HEADER_WAIT, compile_canvas, map_leaves
    from hitl.infra.db import statement_scope

    def group_cpu() -> dict[str, float]:
        out = {"client": time.process_time(), "postgres": 0.0}
        for p in psutil.process_iter(["name"]):
            if (p.info["name"] or "").startswith("postgres"):
                out["postgres"] += _cpu(p)
        return out

    def timed(name: str, fn: Callable[[int], object]) -> None:
        before = group_cpu()
        for i in range(n):
            fn(i)
        after = group_cpu()
        results[name] = {g: (after[g] - before[g]) * 1000 / n for g in before}

    results: dict[str, dict[str, float]] = {}
    with mock.patch.object(outbox, "publish", lambda rows, strict=False: len(rows)):
        runs = [hitl.start("bench-pause-plain", i) for i in range(n)]  # warm-up, and runs to wait and end
        waits: list[tuple[str, str, dict[str, Any]]] = []
        for run_id in runs:
            found: list[dict[str, Any]] = []

            def collect(leaf: dict[str, Any], found: list[dict[str, Any]] = found) -> dict[str, Any]:
                found.append(leaf)
                return leaf

            map_leaves(compile_canvas(bench_pause_plain(0), run_id) or {}, collect)
            leaf = next(f for f in found if HEADER_WAIT in (f["options"].get("headers") or {}))
            waits.append((run_id, leaf["options"]["task_id"], leaf["options"]["headers"][HEADER_WAIT]))
        timed("start", lambda i: hitl.start("bench-nowait-plain", i))

        def wait(i: int) -> None:
            with statement_scope() as s:
                store_waits(s, waits[i][0], waits[i][1], i, waits[i][2])

        timed("wait", wait)
        approvals = [a.id for a in hitl.list_approvals(workflow="bench-pause-plain", limit=n)]
        timed("decision", lambda i: hitl.approve(approvals[i], actor="bench"))

        def end(i: int) -> None:
            with statement_scope() as s:
                end_run(s, runs[i], RunStatus.SUCCEEDED, result=i)

        timed("end", end)
    return results


def report_database_work(
    db: str, work: dict[str, dict[str, float]], results: dict[str, list[dict[str, float]]]
) -> None:
    """Print each CPU-bound figure's budget (what its target leaves for hitl, from the plain-Celery CPU just
    measured) against the database work that figure's runs cannot do without.

    Figures 1 and 6 saturate the cores (the client starts runs faster than the workers finish them), so their
    rate is about the inverse of the CPU a run costs. Figure 2 is left out: its client decides one approval
    after another, so its rate is bound by one decision's wall time (round trips included) more than by CPU.
    """

    def total(name: str) -> float:
        return sum(statistics.median(r[g] for r in results[name]) for g in GROUPS)

    def cost(*names: str) -> float:
        return sum(sum(work[n].values()) for n in names)

    print(f"\n{db}: hitl's writes alone, ms of CPU per call (this process + PostgreSQL; nothing published)")
    for name, w in work.items():
        print(f"  {name:10} client {w['client']:6.2f}  postgres {w['postgres']:6.2f}  total {sum(w.values()):6.2f}")
    print(f"{db}: what each target leaves hitl per run (plain Celery's CPU x (1/target - 1)) against those writes")
    for figure, target, twin, writes in (
        ("1. start→pause", 0.9, "plain-3", ("start", "wait")),
        ("6. no wait", 0.95, "plain-3", ("start", "end")),
    ):
        budget = total(twin) * (1 / target - 1)
        writes_cost = cost(*writes)
        best = total(twin) / (total(twin) + writes_cost)
        print(
            f"  {figure:18} target {target:.2f}x  budget {budget:5.2f} ms  writes ({' + '.join(writes)}) "
            f"{writes_cost:5.2f} ms  -> best ratio with only these writes {best:.2f}x"
        )


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
            run_db(db, args.runs, args.rounds, pg)
    finally:
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
