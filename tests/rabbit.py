"""A real RabbitMQ node for the tests: its own node name, ports, data and logs in a temporary folder.

Uses Debian's ``rabbitmq-server`` (the scripts under /usr/lib/rabbitmq/bin, not the /usr/sbin wrapper that
switches to the ``rabbitmq`` user). Nothing is shared with a system RabbitMQ: the AMQP port, the Erlang
distribution port and the port mapper (epmd) port are free ports chosen here, the Erlang cookie lives in
the node's own HOME, and no system config or plugin is read.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.pg import free_port

START_TIMEOUT_SECONDS = 60.0


def rabbitmq_server() -> Path | None:
    """The ``rabbitmq-server`` script to run, or None when RabbitMQ is not installed."""
    for candidate in (
        "/usr/lib/rabbitmq/bin/rabbitmq-server",
        *glob.glob("/usr/lib/rabbitmq/lib/*/sbin/rabbitmq-server"),
    ):
        if os.path.exists(candidate):
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    return Path(found) if found and not found.startswith("/usr/sbin") else None


@dataclass
class RabbitNode:
    """A running throwaway node; :attr:`url` is its broker URL (user ``guest``, loopback only)."""

    folder: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def stop(self) -> None:
        """Stop the node (SIGTERM, SIGKILL after 20 s), its port mapper, and remove its folder."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        epmd = shutil.which("epmd") or next(iter(glob.glob("/usr/lib/erlang/erts-*/bin/epmd")), None)
        if epmd:
            subprocess.run([epmd, "-kill"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_rabbitmq() -> RabbitNode:
    """Start a node and wait until it accepts an AMQP connection.

    Raises:
        RuntimeError: RabbitMQ is not installed, or the node did not accept connections in time (with the
            tail of its log).
    """
    from hitl.core.health import broker_problem

    script = rabbitmq_server()
    if script is None:
        raise RuntimeError("rabbitmq-server is not installed (Debian package rabbitmq-server)")
    folder = Path(tempfile.mkdtemp(prefix="hitl-rabbit-"))
    (folder / "enabled_plugins").write_text("[].\n")
    (folder / "rabbitmq-env.conf").write_text("")
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(folder),  # the Erlang cookie is made here
        "RABBITMQ_NODENAME": f"hitl-{os.getpid()}-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "ERL_EPMD_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
    }
    with open(folder / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [str(script)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder
        )
    node = RabbitNode(folder, port, env, proc)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if broker_problem(node.url) is None:
            return node
        time.sleep(0.3)
    tail = (folder / "server.log").read_text(errors="replace")[-3000:]
    node.stop()
    raise RuntimeError(f"RabbitMQ did not start:\n{tail}")


@contextmanager
def rabbitmq_node() -> Iterator[RabbitNode]:
    """A node for the block; the test is skipped without RabbitMQ on a laptop, and fails in CI (``CI`` set)."""
    import pytest

    try:
        node = start_rabbitmq()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"RabbitMQ unavailable: {exc}")
    try:
        yield node
    finally:
        node.stop()
