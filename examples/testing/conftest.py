"""pytest setup for testing workflows today: hitl on the embedded default in a throwaway folder.

The workflows under test (``examples/refunds.py``) run on a real Celery worker and beat started by ``hitl dev``;
the tests start runs and decide them in-process through hitl's public API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
WORKFLOWS = Path(__file__).resolve().parent.parent  # the folder holding refunds.py

# hitl reads its settings once, when it is first imported: set them before anything imports hitl.
HOME = tempfile.mkdtemp(prefix="hitl-tests-")
os.environ.update(
    {
        "HITL_HOME": HOME,  # its own SQLite file and embedded broker, nothing shared with your dev setup
        "HITL_WORKFLOW_MODULES": '["refunds"]',
        "HITL_SWEEP_INTERVAL": "0.5",  # deadlines swept twice a second, for tests of timeouts
        "PYTHONPATH": os.pathsep.join(p for p in (str(WORKFLOWS), os.environ.get("PYTHONPATH")) if p),
    }
)
sys.path.insert(0, str(WORKFLOWS))


def wait_until(predicate: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def hitl_services() -> Iterator[None]:
    """``hitl dev`` (the embedded broker, a worker, a notifier worker and beat) for the whole session."""
    log = open(Path(HOME) / "dev.log", "w")  # noqa: SIM115 - open for the lifetime of the process
    proc = subprocess.Popen([sys.executable, "-m", "hitl", "dev"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # hitl dev stops its worker and beat
        proc.wait(timeout=60)
        subprocess.run([sys.executable, "-m", "hitl", "broker", "stop"], check=True, capture_output=True)
        log.close()
