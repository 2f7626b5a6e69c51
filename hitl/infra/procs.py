"""Running Celery worker and beat processes for ``hitl dev``, ``hitl demo`` and the tests.

They are ordinary ``celery -A hitl.app worker|beat`` processes started with this interpreter and the
current environment; nothing here is a substitute for them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

#: How long a worker may take to report ready.
READY_TIMEOUT_SECONDS = 60.0


def celery_argv(*args: str) -> list[str]:
    """Return the argv of ``celery -A hitl.app ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "hitl.app", *args]


@dataclass
class Service:
    """A child process with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def log_text(self) -> str:
        """Return what the process has logged so far ('' when it logs to the terminal)."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the process (SIGTERM: a worker finishes its current tasks), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log:
            self._log.close()
        return self.proc.returncode


def spawn(name: str, argv: list[str], log_path: Path | None, env: dict[str, str] | None = None) -> Service:
    """Start ``argv`` in its own process group, logging to ``log_path`` (or the terminal when None)."""
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed in Service.stop
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        env=env or os.environ.copy(),
        start_new_session=True,
    )
    return Service(name, proc, log_path, log)


def start_worker(
    log_path: Path | None,
    *,
    concurrency: int = 2,
    pool: str = "prefork",
    queues: str | None = None,
    hostname: str = "hitl@%h",
    extra: tuple[str, ...] = (),
) -> Service:
    """Start ``celery worker`` with task events on (for Flower)."""
    argv = celery_argv(
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--hostname",
        hostname,
        "--events",
        *extra,
    )
    if queues:
        argv += ["--queues", queues]
    return spawn("worker", argv, log_path)


def start_notifier(log_path: Path | None, *, concurrency: int = 4) -> Service:
    """Start a worker on the notify queue alone (``HITL_NOTIFY_QUEUE``), with a thread pool: sending notices
    is waiting on the network, and a slow notifier then holds none of the processes that run steps."""
    from hitl.infra.settings import get_settings

    service = start_worker(
        log_path,
        concurrency=concurrency,
        pool="threads",
        queues=get_settings().notify_queue,
        hostname="notify@%h",
    )
    service.name = "notifier"
    return service


def start_beat(log_path: Path | None, extra: tuple[str, ...] = ()) -> Service:
    """Start ``celery beat`` (deadline sweep, outbox relay, cron jobs)."""
    return spawn("beat", celery_argv("beat", "--loglevel", "INFO", *extra), log_path)


def wait_ready(worker: Service, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Wait until ``worker`` logs that it is ready.

    Raises:
        RuntimeError: it exited or did not become ready within ``timeout`` seconds (with its log's tail).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"{worker.name} exited with {worker.proc.returncode}:\n{worker.log_text()[-3000:]}")
        if " ready." in worker.log_text():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{worker.name} not ready after {timeout:.0f}s:\n{worker.log_text()[-3000:]}")
