"""A real PostgreSQL server for the tests: initdb into a temporary folder, listening on a loopback port.

Uses the PostgreSQL binaries on the machine (``pg_ctl`` on PATH or under /usr/lib/postgresql/*/bin). As root
the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def pg_bin() -> Path | None:
    """The folder of ``pg_ctl`` and ``initdb``, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    bin: Path
    data: Path
    port: int
    as_user: list[str]
    #: ``pg_ctl start``'s server options (port, socket folder, settings).
    options: str = ""
    _n: int = 0

    def _run(self, *argv: str) -> None:
        proc = subprocess.run([*self.as_user, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")

    def create_database(self, prefix: str = "hitl") -> str:
        """Create a fresh database; return its SQLAlchemy URL."""
        self._n += 1
        name = f"{prefix}_{os.getpid()}_{self._n}"
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "hitl", name)
        return f"postgresql+psycopg://hitl@127.0.0.1:{self.port}/{name}"

    def create_password_user(self, user: str, password: str) -> str:
        """Create a login role that must give ``password`` (SCRAM over TCP; other roles stay trusted) and a
        database it owns; return the database's SQLAlchemy URL with the password in it."""
        import psycopg

        admin = f"host=127.0.0.1 port={self.port} user=hitl dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
            conn.execute(f"CREATE DATABASE {user} OWNER {user}")
        hba = self.data / "pg_hba.conf"
        rule = f"host all {user} 127.0.0.1/32 scram-sha-256\n"
        hba.write_text(rule + hba.read_text())  # the first matching line wins
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "reload")
        return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{self.port}/{user}"

    def kill(self) -> None:
        """Stop the server at once, as a crash would (``pg_ctl -m immediate``: no shutdown checkpoint,
        connections cut); its data stays for :meth:`start`."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def start(self) -> None:
        """Start the server on its data folder and port (after :meth:`kill`); it recovers from its WAL."""
        log = str(self.data.parent / "pg.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", self.options, "-l", log, "-w", "start")

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(self.data.parent, ignore_errors=True)


def start_postgres() -> PgServer:
    """Initialise and start a throwaway cluster in a new folder under the system's temporary folder.

    Raises:
        RuntimeError: PostgreSQL is not installed or did not start.
    """
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (no pg_ctl); scripts/test.sh installs it in CI")
    root = Path(tempfile.mkdtemp(prefix="hitl-pg-"))  # directly under /tmp: the postgres user can reach it
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data = root / "data"
    port = free_port()
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c max_connections=300"
    server = PgServer(bindir, data, port, as_user, opts)
    server._run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "hitl", "-E", "UTF8")
    server.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.1)
    raise RuntimeError(f"PostgreSQL did not start; see {root / 'pg.log'}")
