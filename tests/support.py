"""Helpers shared by the integration and acceptance tiers: a real stack of processes, and waiting on conditions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.pg import free_port

ROOT = Path(__file__).resolve().parent.parent
TEST_GROUPS = {"editors": ["alice", "bob", "carol", "a"], "dba": ["dana", "alice", "a"]}
T = TypeVar("T")


# The name under which fault-injection tests record their figures (``record_property``) for the summary.
FIGURES = "hitl_fault_figures"


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
    from hitl.infra import db
    from hitl.infra.celery_app import reconfigure
    from hitl.infra.settings import get_settings

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
        # The example workflows ask groups "editors" and "dba"; only their members may decide.
        "HITL_GROUPS": json.dumps(TEST_GROUPS),
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


def process_env(env: dict[str, str] | None) -> dict[str, str]:
    """The environment of a hitl subprocess: this process's, with ``env`` on top. An ``env`` naming ``HITL_HOME``
    is a whole hitl environment (as :func:`base_env` makes): the ``HITL_*`` variables this test process holds (a
    stack another test pointed it at) are not inherited then."""
    inherited = dict(os.environ)
    if env and "HITL_HOME" in env:
        inherited = {k: v for k, v in inherited.items() if not k.startswith("HITL_")}
    return {**inherited, **(env or {})}


def hitl_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
    """Run the ``hitl`` command as a subprocess, as a user would.

    ``env`` goes on top of this process's environment (see :func:`process_env`).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "hitl", *args],
        capture_output=True,
        text=True,
        env=process_env(env),
        timeout=timeout,
        cwd=ROOT,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


class RedisServer:
    """A Redis server the test owns (not the embedded daemon), for stopping and restarting the broker."""

    def __init__(self, home: Path) -> None:
        from hitl.infra.broker import server_binary

        self.home = home
        self.binary = server_binary()
        self.socket = home / "ext-redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def start(self) -> None:
        argv = [
            self.binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--dir",
            str(self.home),
            "--appendonly",
            "yes",
            "--appendfilename",
            "ext.aof",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        with open(self.home / "ext-redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.socket.exists, timeout=10, what="the Redis server's socket")

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): what it acknowledged is in its append-only file (fsync always)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.socket.unlink(missing_ok=True)


@contextmanager
def redis_with_password(home: Path, password: str, *args: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Run a Redis server on a free loopback port that requires ``password`` (``requirepass``); yield its port
    and process. ``args`` replace the default command line (``redis-server --requirepass PASSWORD``)."""
    from hitl.infra.broker import server_binary

    port = free_port()
    argv = [*(args or (server_binary(), "--requirepass", password)), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(home), "--save", ""]
    with open(home / "redis-pw.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Stack:
    """A running broker, worker and beat sharing one HITL_HOME."""

    home: Path
    env: dict[str, str]
    services: list[Any]
    redis: RedisServer | None = None
    concurrency: int = 2
    pool: str = "prefork"
    #: The queues the worker consumes (None: every queue, notices included).
    queues: str | None = None
    #: Workers that exited on their own and were restarted, as a process supervisor (systemd, Docker's
    #: restart policy) would. kombu's Redis transport can exit a worker on reconnect ("Unrecoverable error").
    crashes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def supervise(self) -> None:
        """Restart the worker whenever it exits on its own, until the stack stops (runs in a thread)."""
        while not self._stopping.wait(0.5):
            with self._lock:
                if self.worker.proc.poll() is not None and not self._stopping.is_set():
                    self.crashes += 1
                    self.restart_worker(kill=False)

    def cli(self, *args: str, timeout: float = 60) -> CliResult:
        return hitl_cli(*args, env=self.env, timeout=timeout)

    @property
    def worker(self) -> Any:
        return self.services[0]

    def kill_and_restart_worker(self) -> None:
        """Kill -9 the worker's whole process group (main process and pool), then start a new worker."""
        with self._lock:
            self.restart_worker(kill=True)

    def restart_worker(self, *, kill: bool) -> None:
        from hitl.infra.procs import start_worker, wait_ready

        old = self.services[0]
        if kill and old.proc.poll() is None:
            os.killpg(old.proc.pid, 9)
            old.proc.wait()
        log = self.home / f"worker-{len(self.services)}.log"
        self.services[0] = start_worker(log, concurrency=self.concurrency, pool=self.pool, queues=self.queues)
        self.services.append(old)  # keep its log for the report
        wait_ready(self.services[0])

    @contextmanager
    def worker_down(self) -> Iterator[None]:
        """Stop the worker (SIGTERM) for the block, with no supervisor restart; start a new one after."""
        with self._lock:
            self.worker.stop()
            try:
                yield
            finally:
                self.restart_worker(kill=False)

    def add_beat(self) -> Any:
        from hitl.infra.procs import start_beat

        beat = start_beat(
            self.home / f"beat-{len(self.services)}.log",
            extra=("--schedule", str(self.home / f"beat-{len(self.services)}-schedule")),
        )
        self.services.append(beat)
        return beat


@contextmanager
def running_stack(
    home: Path,
    *,
    concurrency: int = 2,
    pool: str = "prefork",
    beat: bool = True,
    external_broker: bool = False,
    queues: str | None = None,
    notifier: bool = False,
    **env_extra: str,
) -> Iterator[Stack]:
    """Start a Redis server, a real ``celery worker`` and (optionally) ``celery beat``; stop them after.

    ``queues`` limits the worker to those queues; ``notifier`` adds a worker on the notify queue alone, as
    ``hitl dev`` runs them (``queues="celery", notifier=True``).

    The broker is the embedded one, or with ``external_broker`` a server the test owns (``Stack.redis``),
    reached through ``HITL_BROKER_URL`` so that nothing restarts it behind the test's back.
    """
    redis_server = None
    if external_broker:
        point_process_at(base_env(home))
        redis_server = RedisServer(home)
        redis_server.start()
        env_extra = {**env_extra, "HITL_BROKER_URL": redis_server.url}
    env = base_env(home, **env_extra)
    point_process_at(env)
    from hitl.infra import broker, db
    from hitl.infra.procs import start_beat, start_notifier, start_worker, wait_ready

    broker.ensure_broker()
    db.get_engine()
    services = [start_worker(home / "worker.log", concurrency=concurrency, pool=pool, queues=queues)]
    if beat:
        services.append(start_beat(home / "beat.log"))
    if notifier:
        services.append(start_notifier(home / "notifier.log"))
    stack = Stack(home, env, services, redis_server, concurrency, pool, queues)
    supervisor = threading.Thread(target=stack.supervise, daemon=True)
    try:
        for service in services:
            if service.name != "beat":
                wait_ready(service)
        supervisor.start()
        yield stack
    finally:
        stack._stopping.set()
        with stack._lock:
            pass
        for s in stack.services:
            s.stop()
        if redis_server is not None:
            redis_server.kill()
        else:
            broker.stop_broker()
        for s in stack.services:
            log = s.log_text()
            if "Traceback" in log:
                sys.stderr.write(f"\n----- {s.name} log ({home}) -----\n{log[-6000:]}\n")


@dataclass
class ApiServer:
    """A ``hitl serve`` process of a stack, reached over HTTP on the loopback interface."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    stack: Stack
    clients: list[Any] = field(default_factory=list)

    def client(self, key: str | None = None, **headers: str) -> Any:
        """An httpx client on this server, sending ``key`` as a bearer credential."""
        import httpx

        if key:
            headers["Authorization"] = f"Bearer {key}"
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30, follow_redirects=False)
        self.clients.append(client)
        return client

    def key(self, actor: str, *scopes: str) -> str:
        """Create an API key for ``actor`` with ``scopes`` through the CLI and return it."""
        args = [a for s in scopes for a in ("--scope", s)]
        res = self.stack.cli("keys", "create", "--actor", actor, *args, "--json")
        assert res.code == 0, res.err
        return str(res.json()["key"])

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def api_server(stack: Stack, *serve_args: str) -> Iterator[ApiServer]:
    """Run ``hitl serve [SERVE_ARGS]`` for ``stack`` on a free port until the block ends; links point at it."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stack.env["HITL_PUBLIC_URL"] = url
    point_process_at(stack.env)
    log = stack.home / f"api-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hitl", "serve", "--port", str(port), *serve_args],
            env={**os.environ, **stack.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    server = ApiServer(url, proc, log, stack)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"hitl serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=60, what="hitl serve to answer /health")
        yield server
    finally:
        server.stop()
        text = log.read_text()
        if "Traceback" in text:
            sys.stderr.write(f"\n----- hitl serve log ({log}) -----\n{text[-6000:]}\n")


def start_gate(client: Any, **payload: Any) -> tuple[str, dict[str, Any]]:
    """Start a gate run over HTTP and wait for its pending approval; return (run id, approval)."""
    res = client.post("/api/v1/runs", json={"workflow": "gate", "payload": payload})
    assert res.status_code == 201, res.text
    run_id = res.json()["run_id"]

    def pending() -> Any:
        page = client.get("/api/v1/approvals", params={"run_id": run_id}).json()
        return page["items"][0] if page["items"] else None

    return run_id, wait_for(pending, what=f"run {run_id} to wait")
