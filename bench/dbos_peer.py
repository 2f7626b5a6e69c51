"""DBOS Transact as a peer of hitl in the benchmark: the same workflows, measured the same way, on PostgreSQL.

    python bench/dbos_peer.py --pg-url postgresql+psycopg://hitl@127.0.0.1:5433/bench --n 150 --rounds 3

prints one JSON object on stdout; ``measure()`` returns the same object to a caller (``bench/run.py``).

Install (an optional extra, ``bench = ["dbos>=3.4,<4"]``)::

    .venv/bin/pip install 'dbos>=3.4,<4'

Into hitl's own virtualenv it adds ``dbos`` and ``croniter`` and changes no installed version (checked with
``pip install --dry-run`` against dbos 3.4.0). To use another interpreter (a separate venv holding ``dbos``),
set ``HITL_BENCH_DBOS_PYTHON=/path/to/python``; this file imports neither hitl nor anything outside the
standard library and dbos's own dependencies (SQLAlchemy, psycopg), so it runs from either.

Processes, the same core budget as hitl's benchmark (a 2-process Celery worker and the client that enqueues):
``processes`` worker processes, each ``DBOS.launch()`` with its own executor id, consuming the database-backed
queue ``bench`` (``DBOS.register_queue``); and one client process, the measuring one, that enqueues with
``DBOSClient.enqueue`` and sends decisions with ``DBOSClient.send``. ``measure()`` runs that client as a child
process of its own (``python bench/dbos_peer.py ...``), so the caller never imports dbos; the workers are the
client's children, watch their stdin and exit when the client goes away, and the client stops them on exit.

What each figure times, and how completion is seen without adding writes of our own:

1. start → pause: ``n`` ``bench-pause`` runs (3 ``@DBOS.step``, then ``DBOS.recv("decision", 3600)``),
   from the first ``enqueue`` until ``n`` of them wait. ``recv`` checkpoints its timeout as an
   ``operation_outputs`` row (``function_name = 'DBOS.sleep'``) after checking for a message and right
   before it blocks; the client counts those rows. That row is DBOS's own, as hitl's pending approval row is.
2. decision → 2-step continuation done: ``DBOSClient.send(id, message, "decision")`` to each waiting run, until
   ``n`` have ``workflow_status.status = 'SUCCESS'`` (``recv`` returns, 2 steps, the workflow ends).
3. decision → first continuation step start: ``bench-latency`` runs (1 step, ``recv``, a step) wait first; then,
   open loop at ``latency_rate`` per second, ``send`` a message carrying ``time.time()`` taken just before the
   call. The step after ``recv`` returns ``time.time() - sent`` at the start of its body; that is the step's
   and the workflow's checkpointed output, read back with ``DBOSClient.list_workflows`` afterwards.
6. no wait: ``n`` ``bench-nowait`` runs (3 steps) until ``n`` are SUCCESS. Around it every table of the ``dbos``
   schema is counted: ``rows_per_nowait_run`` is the growth divided by ``n`` (rows inserted and kept; the
   status row's updates are not rows). CPU time of the workers, the client and every process of the database
   server over the same window is given per run as well.

Each round measures figure 1, then 2, then 6; figure 3 runs once, after the rounds, as in ``bench/run.py``.

Settings are DBOS's defaults but one: the queue's polling interval is 0.05 s instead of 1 s. Each worker looks
for enqueued workflows once per interval and claims every one it finds (no concurrency limit is set). With 1 s,
a burst of 150 enqueues waits up to 1 s for the first poll (70-920 ms measured; a wait no work fills, in a
2-3 s window) and is then claimed mostly or wholly by whichever worker polled first, leaving the other process
idle: figures 1 and 6 then measure the poll, not the cost of a run, while hitl's worker is pushed its tasks by
the broker and uses both processes. At 0.05 s the first claim comes within tens of milliseconds and a burst
spreads over both workers; the extra polls' queries are in the CPU figures. ``polling_interval_sec=1.0``
measures DBOS's default; each figure's ``claims`` shows the wait for the first claim and how the runs were split.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

APP = "hitl-bench-dbos"
QUEUE = "bench"
TOPIC = "decision"
HERE = Path(__file__).resolve()
#: Longest any one phase may take before the benchmark gives up.
PHASE_TIMEOUT = 300.0
#: The queue polling interval DBOS defaults to, and the one the benchmark uses (module docstring: why).
DBOS_POLLING_SEC = 1.0
BENCH_POLLING_SEC = 0.05
#: CPU seconds of the workers, of the client and of the database server's processes (by pid), at one moment.
_CpuSample = tuple[list[float | None], float, dict[int, float] | None]


def measure(
    pg_url: str,
    n: int,
    rounds: int,
    processes: int = 2,
    *,
    latency_rate: float = 40.0,
    latency_samples: int = 200,
    polling_interval_sec: float = BENCH_POLLING_SEC,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Measure DBOS's figures 1, 2, 3 and 6 on the PostgreSQL server at ``pg_url``, in child processes.

    Args:
        pg_url: SQLAlchemy or libpq URL of a database DBOS may create its ``dbos`` schema in.
        n: runs per throughput figure and round.
        rounds: rounds of figures 1, 2 and 6 (in that order within a round); 0 measures figure 3 only.
        processes: DBOS worker processes consuming the queue.
        latency_rate: figure 3's send rate, messages per second (open loop).
        latency_samples: figure 3's number of messages; 0 skips figure 3 (to interleave single rounds with
            hitl's: ``measure(url, n, 1, latency_samples=0)`` per round, then ``measure(url, n, 0)``).
        polling_interval_sec: the queue's polling interval (DBOS's default is 1.0; see the module docstring).
        timeout: seconds the whole measurement may take.

    Returns:
        The JSON object ``python bench/dbos_peer.py`` prints (see ``_measure_here``).

    Raises:
        RuntimeError: the measurement failed (the child's stderr tail is in the message).
        subprocess.TimeoutExpired: it took longer than ``timeout``; every child process has been killed.
    """
    python = os.environ.get("HITL_BENCH_DBOS_PYTHON") or sys.executable
    argv = [python, str(HERE), "--pg-url", pg_url, "--n", str(n), "--rounds", str(rounds)]
    argv += ["--processes", str(processes), "--latency-rate", str(latency_rate)]
    argv += ["--latency-samples", str(latency_samples), "--polling-interval", str(polling_interval_sec)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        out.seek(0)
        err.seek(0)
        if code != 0:
            tail = err.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"dbos_peer exited with {code}:\n{tail}")
        result: dict[str, Any] = json.loads(out.read())
        return result


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the client ``proc`` and its workers (its process group): SIGTERM, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)  # reaped, or the group would still count it
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------------------
# Worker process


def _register_workflows() -> None:
    """Declare the benchmark's steps and workflows (names are what the client enqueues)."""
    from dbos import DBOS

    @DBOS.step(name="bench.step")
    def step(x: Any) -> Any:
        return x

    @DBOS.step(name="bench.latency")
    def latency_step(message: dict[str, float]) -> float:
        return time.time() - float(message["sent"])

    @DBOS.workflow(name="bench-pause")
    def bench_pause(payload: Any) -> Any:
        x = step(step(step(payload)))
        decision = DBOS.recv(TOPIC, timeout_seconds=3600)
        return step(step(decision if decision is not None else x))

    @DBOS.workflow(name="bench-latency")
    def bench_latency(payload: Any) -> float:
        step(payload)
        return latency_step(DBOS.recv(TOPIC, timeout_seconds=3600))

    @DBOS.workflow(name="bench-nowait")
    def bench_nowait(payload: Any) -> Any:
        return step(step(step(payload)))


def _worker(pg_url: str, executor_id: str, polling_interval_sec: float) -> int:
    """Launch DBOS, consume the queue; print ``ready`` once its queue thread runs; exit when stdin closes."""
    from dbos import DBOS

    _register_workflows()
    DBOS(config={"name": APP, "system_database_url": pg_url, "executor_id": executor_id})
    DBOS.launch()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stdin() -> None:  # the client closes our stdin to stop us, or dies and the pipe closes
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        DBOS.register_queue(QUEUE, polling_interval_sec=polling_interval_sec, on_conflict="always_update")
        _wait(lambda: any(t.name == f"queue-worker-{QUEUE}" for t in threading.enumerate()), 30, "queue thread")
        print("ready", flush=True)
        stop.wait(timeout=24 * 3600)
    finally:
        DBOS.destroy(workflow_completion_timeout_sec=0)
        sys.stdout.flush()
        # Runs still blocked in recv (an interrupted measurement) hold executor threads the interpreter would
        # join at exit; their state is in the database, so leave at once.
        os._exit(0)


# ---------------------------------------------------------------------------------------------------------------
# Client process (the measuring one)


def _wait(predicate: Callable[[], bool], timeout: float = PHASE_TIMEOUT, what: str = "phase") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"DBOS benchmark: {what} did not finish in {timeout:.0f} s")
        time.sleep(0.02)


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state is [0], ppid [1]), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` from /proc, or None when it cannot be read."""
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None


def _server_cpu(backend_pid: int) -> dict[int, float] | None:
    """CPU seconds of every process of the PostgreSQL server that runs ``backend_pid`` (the postmaster's
    children), or None when the server is not on this machine (no such process to read)."""
    fields = _proc_stat(backend_pid)
    if fields is None:
        return None
    postmaster = fields[1]
    found: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(entry)) is not None and stat[1] == postmaster:
            found[int(entry)] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return found


@contextlib.contextmanager
def _workers(
    pg_url: str, processes: int, polling_interval_sec: float, tag: str, logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``processes`` workers one after another (each waits for ``ready``); stop them all on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for k in range(processes):
            argv = [sys.executable, str(HERE), "--worker", "--pg-url", pg_url, "--executor-id", f"bench-{tag}-w{k}"]
            argv += ["--polling-interval", str(polling_interval_sec)]
            log = open(logs / f"worker{k}.log", "wb")  # noqa: SIM115 - closed with the process below
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            log.close()
            procs.append(proc)
            line = _readline(proc, 60)
            if line.strip() != b"ready":
                tail = (logs / f"worker{k}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"DBOS worker {k} did not start: {line!r}\n{tail}")
        yield procs
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()  # the worker's stdin watcher stops it
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of ``proc``'s stdout, or b"" when it exits or ``timeout`` passes first."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline() if proc.stdout else b""), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0] if got else b""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Client:
    """The measuring process's side: enqueue and send through ``DBOSClient``, read progress from DBOS's tables."""

    def __init__(self, pg_url: str, n: int, tag: str) -> None:
        import sqlalchemy as sa
        from dbos import DBOSClient

        self.sa = sa
        self.n = n
        self.workers: list[subprocess.Popen[bytes]] = []
        self.engine = sa.create_engine(sa.make_url(pg_url).set(drivername="postgresql+psycopg"), pool_size=2)
        self.client = DBOSClient(system_database_url=pg_url, application_name=APP)
        self.tag = tag

    def cancel_leftovers(self) -> int:
        """Cancel runs an interrupted earlier measurement left queued or running, so no worker picks them up."""
        left = self.client.list_workflows(
            status=["ENQUEUED", "PENDING"], queue_name=QUEUE, load_input=False, load_output=False
        )
        if left:
            self.client.cancel_workflows([w.workflow_id for w in left])
        return len(left)

    def close(self) -> None:
        self.client.destroy()
        self.engine.dispose()

    def _scalar(self, sql: str, **params: Any) -> int:
        with self.engine.connect() as c:
            return int(c.execute(self.sa.text(sql), params).scalar() or 0)

    def waiting(self, prefix: str) -> int:
        """Runs under ``prefix`` blocked in ``recv``: it records its timeout ('DBOS.sleep') just before waiting."""
        return self._scalar(
            "SELECT count(*) FROM dbos.operation_outputs WHERE function_name = 'DBOS.sleep' AND workflow_uuid LIKE :p",
            p=prefix + "%",
        )

    def succeeded(self, prefix: str) -> int:
        return self._scalar(
            "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS' AND workflow_uuid LIKE :p",
            p=prefix + "%",
        )

    def claims(self, prefix: str) -> dict[str, Any]:
        """How the queue handed out one figure's runs: ms from the first enqueue to the first claim, per executor.

        ``created_at`` is stamped by the client's clock and ``started_at_epoch_ms`` by the database's, so on one
        machine the difference is good to about a millisecond (and can read -1).
        """
        with self.engine.connect() as c:
            got = c.execute(
                self.sa.text(
                    "SELECT executor_id, count(*), min(created_at), min(started_at_epoch_ms)"
                    " FROM dbos.workflow_status WHERE workflow_uuid LIKE :p GROUP BY executor_id"
                ),
                {"p": prefix + "%"},
            ).all()
        first_enqueue, first_claim = min(r[2] for r in got), min(r[3] for r in got)
        return {"first_claim_ms": int(first_claim - first_enqueue), "runs_by_executor": {r[0]: r[1] for r in got}}

    def table_rows(self) -> dict[str, int]:
        with self.engine.connect() as c:
            names = list(
                c.execute(
                    self.sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'dbos' ORDER BY tablename")
                ).scalars()
            )
            return {t: int(c.execute(self.sa.text(f'SELECT count(*) FROM dbos."{t}"')).scalar() or 0) for t in names}

    def cpu_sample(self) -> _CpuSample:
        """CPU seconds so far of the workers, this process and the database server's processes."""
        with self.engine.connect() as c:
            backend = int(c.execute(self.sa.text("SELECT pg_backend_pid()")).scalar() or 0)
        t = os.times()
        return [_cpu_seconds(w.pid) for w in self.workers], t.user + t.system, _server_cpu(backend)

    def enqueue(self, workflow: str, prefix: str, count: int) -> list[str]:
        ids = [f"{prefix}{i}" for i in range(count)]
        for i, wid in enumerate(ids):
            self.client.enqueue({"workflow_name": workflow, "queue_name": QUEUE, "workflow_id": wid}, i)
        return ids

    def send_all(self, ids: list[str]) -> None:
        for wid in ids:
            self.client.send(wid, "approved", TOPIC)

    def rate(self, start: Callable[[], object], done: Callable[[], bool], what: str) -> float:
        """Runs per second: ``n`` over the time from calling ``start`` until ``done`` holds."""
        t0 = time.perf_counter()
        start()
        _wait(done, what=what)
        return self.n / (time.perf_counter() - t0)

    def warm_up(self) -> None:
        """Connections, first touch of the tables and the workflow code (not measured)."""
        prefix = f"{self.tag}-warm-"
        for i in range(20):  # spread over several polls, so that every worker gets some
            self.enqueue("bench-nowait", f"{prefix}{i}-", 1)
            time.sleep(0.02)
        _wait(lambda: self.succeeded(prefix) >= 20, what="warm-up")

    def round(self, r: int) -> dict[str, Any]:
        """Figures 1, 2 and 6 once, in that order."""
        n, pause, nowait = self.n, f"{self.tag}-r{r}-pause-", f"{self.tag}-r{r}-nowait-"
        ids: list[str] = []
        out: dict[str, Any] = {
            "pause": self.rate(
                lambda: ids.extend(self.enqueue("bench-pause", pause, n)),
                lambda: self.waiting(pause) >= n,
                "figure 1",
            ),
            "pause_claims": self.claims(pause),
            "decide": self.rate(lambda: self.send_all(ids), lambda: self.succeeded(pause) >= n, "figure 2"),
        }
        rows_before, cpu_before = self.table_rows(), self.cpu_sample()
        out["nowait"] = self.rate(
            lambda: self.enqueue("bench-nowait", nowait, n), lambda: self.succeeded(nowait) >= n, "figure 6"
        )
        cpu_after, rows_after = self.cpu_sample(), self.table_rows()
        out["nowait_claims"] = self.claims(nowait)
        out["rows"] = {t: rows_after[t] - rows_before.get(t, 0) for t in rows_after}
        out["cpu_ms"] = _cpu_per_run(cpu_before, cpu_after, n)
        return out

    def latency(self, rate: float, samples: int) -> list[float]:
        """Figure 3: seconds from each ``send`` to the start of the step after ``recv``, sends at ``rate``/s."""
        prefix = f"{self.tag}-latency-"
        ids = self.enqueue("bench-latency", prefix, samples)
        _wait(lambda: self.waiting(prefix) >= samples, what="figure 3 setup")
        t0 = time.perf_counter()
        for i, wid in enumerate(ids):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.client.send(wid, {"sent": time.time()}, TOPIC)
        _wait(lambda: self.succeeded(prefix) >= samples, what="figure 3")
        statuses = self.client.list_workflows(workflow_id_prefix=prefix, load_input=False)
        return [float(s.output) for s in statuses if s.output is not None]


def _measure_here(
    pg_url: str,
    n: int,
    rounds: int,
    processes: int,
    latency_rate: float,
    latency_samples: int,
    polling_interval_sec: float,
) -> dict[str, Any]:
    """The measurement itself, in this (client) process. Returns the JSON object ``measure()`` returns:

    ``{"system": "dbos", "dbos_version", "database": "postgresql", "n", "rounds", "processes",
    "settings": {...}, "notes": [...], "machine", "load_average": {"start": [1, 5, 15 min], "end": [...]},
    "figures": {"pause_rate": {"rounds": [runs/s, ...], "median", "unit", "claims": [{"first_claim_ms",
    "runs_by_executor": {executor id: runs}}, ...]}, "decide_rate": {"rounds", "median", "unit"},
    "nowait_rate": {like pause_rate}, "latency_ms": {"rate", "samples", "p50", "p99"}},
    "rows_per_nowait_run", "rows_per_nowait_run_by_table": {table: rows},
    "cpu_ms_per_nowait_run": {"workers", "client", "postgres"}, "seconds"}``; a median, p50/p99 or
    ``rows_per_nowait_run`` is None when its figure was not measured (``rounds=0``, ``latency_samples=0``).
    """
    from importlib.metadata import version

    from dbos import DBOS

    started, load_start = time.time(), os.getloadavg()
    DBOS.migrate(pg_url)  # once, before the workers launch (they would race to create the schema)
    logs = Path(tempfile.mkdtemp(prefix="hitl-bench-dbos-"))
    tag = f"{int(started)}-{os.getpid()}"
    bench = _Client(pg_url, n, tag)
    try:
        leftovers = bench.cancel_leftovers()
        with _workers(pg_url, processes, polling_interval_sec, tag, logs) as bench.workers:
            bench.warm_up()
            done = [bench.round(r) for r in range(rounds)]
            latencies = bench.latency(latency_rate, latency_samples) if latency_samples > 0 else []
    except BaseException:
        print(f"DBOS worker logs kept in {logs}", file=sys.stderr)
        raise
    finally:
        bench.close()
    shutil.rmtree(logs, ignore_errors=True)

    per_table = {t: statistics.median(r["rows"][t] / n for r in done) for t in done[0]["rows"]} if done else {}
    return {
        "system": "dbos",
        "dbos_version": version("dbos"),
        "database": "postgresql",
        "n": n,
        "rounds": rounds,
        "processes": processes,
        "cancelled_leftovers": leftovers,
        "settings": {
            "queue_polling_interval_sec": polling_interval_sec,
            "queue_polling_interval_is_dbos_default": polling_interval_sec == DBOS_POLLING_SEC,
            "worker_concurrency": None,
            "use_listen_notify": True,
            "executor_threads": "DBOS default (unbounded)",
            "sys_db_pool_size": "DBOS default (20 per worker; client 5)",
        },
        "notes": _notes(polling_interval_sec),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "figures": {
            "pause_rate": {**_summary([r["pause"] for r in done]), "claims": [r["pause_claims"] for r in done]},
            "decide_rate": _summary([r["decide"] for r in done]),
            "nowait_rate": {**_summary([r["nowait"] for r in done]), "claims": [r["nowait_claims"] for r in done]},
            "latency_ms": {
                "rate": latency_rate,
                "samples": len(latencies),
                "p50": round(_percentile(latencies, 0.5) * 1000, 2) if latencies else None,
                "p99": round(_percentile(latencies, 0.99) * 1000, 2) if latencies else None,
            },
        },
        "rows_per_nowait_run": round(sum(per_table.values()), 2) if per_table else None,
        "rows_per_nowait_run_by_table": {t: round(v, 2) for t, v in per_table.items() if v},
        "cpu_ms_per_nowait_run": {k: _median_or_none([r["cpu_ms"][k] for r in done]) for k in _CPU_PARTS},
        "seconds": round(time.time() - started, 1),
    }


_CPU_PARTS = ("workers", "client", "postgres")


def _cpu_per_run(before: _CpuSample, after: _CpuSample, n: int) -> dict[str, float | None]:
    """Milliseconds of CPU per run of the workers, the client and the database server between two samples."""
    pairs = [(x, y) for x, y in zip(before[0], after[0], strict=False) if x is not None and y is not None]
    server = None
    if before[2] is not None and after[2] is not None:  # a backend started in between counts from zero
        server = sum(cpu - before[2].get(pid, 0.0) for pid, cpu in after[2].items()) * 1000 / n
    return {
        "workers": sum(y - x for x, y in pairs) * 1000 / n if pairs else None,
        "client": (after[1] - before[1]) * 1000 / n,
        "postgres": server,
    }


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def _summary(values: list[float]) -> dict[str, Any]:
    median = round(statistics.median(values), 1) if values else None
    return {"rounds": [round(v, 1) for v in values], "median": median, "unit": "runs/s"}


def _notes(polling_interval_sec: float) -> list[str]:
    """What the JSON's figures mean (the module docstring has the reasons)."""
    poll = (
        "DBOS's default, 1 s: a burst waits for the first poll and goes mostly to the worker that polled first"
        if polling_interval_sec == DBOS_POLLING_SEC
        else f"{polling_interval_sec} s instead of DBOS's default 1 s, which would make figures 1 and 6 time the "
        "wait for the next poll and leave one worker idle (hitl's worker is pushed its tasks by the broker)"
    )
    return [
        "Workers: DBOS.launch() per process, queue 'bench' from DBOS.register_queue, no concurrency limit. "
        "Client: DBOSClient.enqueue and DBOSClient.send from the measuring process.",
        "Completion read from DBOS's own rows every 20 ms: figure 1 the operation_outputs row 'DBOS.sleep' recv "
        "writes right before it blocks, figures 2 and 6 workflow_status SUCCESS. Figure 3: the step after recv "
        "returns time.time() minus the time taken just before send(), read from the workflows' outputs.",
        "rows_per_nowait_run: growth of every dbos.* table over figure 6 / n (the status row's updates are not "
        "rows). cpu_ms_per_nowait_run: /proc CPU time over figure 6 of the workers, the client and every process "
        "of the PostgreSQL server (the client's completion polling included).",
        f"Queue polling interval: {poll}; claims gives the wait for the first claim and the split per worker.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-url", required=True, help="PostgreSQL URL (SQLAlchemy or libpq form)")
    parser.add_argument("--n", type=int, default=150, help="runs per throughput figure and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="DBOS worker processes")
    parser.add_argument("--latency-rate", type=float, default=40.0, help="figure 3's messages per second")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument(
        "--polling-interval", type=float, default=BENCH_POLLING_SEC, help="queue polling interval, s (DBOS: 1.0)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--executor-id", default="bench-w0", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.pg_url, args.executor_id, args.polling_interval)
    # SIGTERM (measure()'s timeout) unwinds through the finally blocks that stop the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = _measure_here(
        args.pg_url,
        args.n,
        args.rounds,
        args.processes,
        args.latency_rate,
        args.latency_samples,
        args.polling_interval,
    )
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
