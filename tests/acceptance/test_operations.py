"""Operating hitl: no password in any output, and one-line errors that say what to do.

Every command and service runs as a subprocess against a real PostgreSQL role with a password and a Redis
server with ``requirepass``, on success and failure paths; everything they print or log is searched for the
passwords.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from hitl.infra.migrate import downgrade, head_revision, upgrade
from tests.pg import PgServer, free_port
from tests.support import ROOT, CliResult, base_env, hitl_cli, process_env, redis_with_password, wait_for

pytestmark = pytest.mark.acceptance

DB_PASSWORD = "Pg7sEcReT4db"
BROKER_PASSWORD = "Rd9sEcReT4mq"
WRONG_PASSWORD = "Wr0ngsEcReT2"
SECRETS = (DB_PASSWORD, BROKER_PASSWORD, WRONG_PASSWORD)
HEAD = head_revision()


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a password:\n{text[-3000:]}"


class Outputs:
    """Everything the commands and services of a test printed, searched for the passwords at the end."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.seen: list[tuple[str, str]] = []

    def cli(self, *args: str, env: dict[str, str]) -> CliResult:
        res = hitl_cli(*args, env=env, timeout=90)
        self.seen.append((f"hitl {' '.join(args)}", res.out + res.err))
        return res

    def service(self, name: str, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.home / f"{name}-{len(self.seen)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hitl", *args],
                env=process_env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        self.seen.append((name, ""))
        return proc, log

    def check(self) -> None:
        for where, text in self.seen:
            assert_no_secret(text, where)
        logs = [p for p in self.home.rglob("*") if p.is_file() and p.suffix in {".log", ".txt", ".json"}]
        assert len(logs) >= 8, logs  # the services' logs and redis's
        for path in logs:
            assert_no_secret(path.read_text(errors="replace"), str(path))


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def one_line(res: CliResult) -> str:
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    return lines[0]


@pytest.fixture(scope="module")
def secret_db(postgres: PgServer) -> str:
    return postgres.create_password_user(f"ops_{os.getpid()}", DB_PASSWORD)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def secret_broker(home: Path) -> Iterator[int]:
    with redis_with_password(home, BROKER_PASSWORD) as (port, _):
        yield port


def test_no_password_in_any_output(home: Path, secret_db: str, secret_broker: int) -> None:
    broker = f"redis://:{BROKER_PASSWORD}@127.0.0.1:{secret_broker}/0"
    env = base_env(home, HITL_DATABASE_URL=secret_db, HITL_BROKER_URL=broker)
    masked_db = secret_db.replace(DB_PASSWORD, "***")
    out = Outputs(home)
    wait_for(lambda: out.cli("health", env=env).code == 0, timeout=30, what="the password-protected Redis")

    # Success paths.
    res = out.cli("db", "upgrade", env=env)
    assert res.code == 0 and res.out.strip() == f"{masked_db}: at revision {HEAD}", res.out + res.err
    assert out.cli("db", "current", "--json", env=env).json()["current"] == HEAD
    assert out.cli("broker", "status", env=env).out.strip() == (
        f"redis://:***@127.0.0.1:{secret_broker}/0 (external, reachable); live events through redis"
    )
    assert out.cli("broker", "status", "--json", env=env).json()["url"] == f"redis://:***@127.0.0.1:{secret_broker}/0"
    status = out.cli("health", "--json", env=env).json()
    assert status["status"] == "ok" and status["database"]["url"] == masked_db
    assert out.cli("keys", "create", "--actor", "alice", env=env).code == 0
    assert out.cli("approvals", "list", "--json", env=env).json() == []
    assert out.cli("runs", "list", env=env).code == 0

    worker, worker_log = out.service("worker", ["worker", "-c", "1"], env)
    beat, beat_log = out.service("beat", ["beat"], env)
    port = free_port()
    serve, _ = out.service("serve", ["serve", "--port", str(port)], env)
    try:
        wait_for(lambda: " ready." in worker_log.read_text(), timeout=90, what="the worker")
        run_id = out.cli("start", "gate", "--payload", '{"n": 1}', env=env).out.strip()
        pending = wait_for(lambda: out.cli("approvals", "list", "--run", run_id, "--json", env=env).json(), timeout=60)
        assert out.cli("approve", pending[0]["id"], "--by", "alice", env=env).code == 0
        wait_for(lambda: "Sending due task" in beat_log.read_text(), timeout=60, what="beat to send a job")

        def health() -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5)
            except httpx.HTTPError:
                return None

        res_http = wait_for(health, timeout=60, what="hitl serve")
        assert res_http.json()["status"] == "ok"
        out.seen.append(("GET /api/v1/health", res_http.text))
        assert "results:" in worker_log.read_text()  # Celery's banner names the result backend, masked
    finally:
        for proc in (worker, beat, serve):
            stop(proc)

    dev, dev_log = out.service("dev", ["dev", "-c", "1"], env)
    try:
        first = wait_for(lambda: dev_log.read_text().splitlines()[:1], timeout=60, what="hitl dev's first line")[0]
        assert first == f"hitl dev: broker redis://:***@127.0.0.1:{secret_broker}/0, database {masked_db}"
        wait_for(lambda: dev_log.read_text().count(" ready.") >= 2, timeout=90, what="dev's workers")
    finally:
        stop(dev, signal.SIGINT)

    # Failure paths: a wrong database password, then a wrong broker password.
    bad_db = {**env, "HITL_DATABASE_URL": secret_db.replace(DB_PASSWORD, WRONG_PASSWORD)}
    for args in (["approvals", "list"], ["db", "upgrade"], ["keys", "create", "--actor", "bob"], ["serve"]):
        res = out.cli(*args, env=bad_db)
        line = one_line(res)
        assert res.code == 1 and line.startswith(f"error: database unreachable at {masked_db}: "), res.err
        assert "password authentication failed" in line
    res = out.cli("health", "--json", env=bad_db)
    assert res.code == 1 and res.json()["database"] == {"status": "unreachable", "url": masked_db}
    for service in (["worker", "-c", "1"], ["beat"]):
        proc, log = out.service(service[0], service, bad_db)
        assert proc.wait(90) == 1, log.read_text()[-3000:]
        assert log.read_text().splitlines()[-1].startswith(f"error: database unreachable at {masked_db}: ")
        assert "Traceback" not in log.read_text()

    bad_broker = {**env, "HITL_BROKER_URL": broker.replace(BROKER_PASSWORD, WRONG_PASSWORD)}
    res = out.cli("broker", "status", "--json", env=bad_broker)
    assert res.code == 1 and res.json()["url"].startswith("redis://:***@") and res.json()["reachable"] is False
    res = out.cli("health", "--json", env=bad_broker)
    assert res.code == 1 and res.json()["broker"]["status"] == "unreachable"
    res = out.cli("start", "gate", "--payload", '{"n": 2}', env=bad_broker)
    assert res.code == 0  # stored; the outbox sends it once the broker is back
    worker, worker_log = out.service("worker", ["worker", "-c", "1"], bad_broker)
    try:
        wait_for(lambda: "Cannot connect to" in worker_log.read_text(), timeout=60, what="the worker's broker error")
    finally:
        stop(worker)
    out.check()


def test_schema_behind_the_code_stops_every_process_with_one_line(home: Path) -> None:
    env = base_env(home, HITL_AUTO_MIGRATE="false")
    expected = "error: database has no hitl tables, this hitl needs revision " + HEAD + ": run `hitl db upgrade`"
    assert hitl_cli("approvals", "list", env=env).err.strip() == expected

    assert hitl_cli("db", "upgrade", "--revision", "0003", env=env).code == 0
    behind = f"error: database at revision 0003, this hitl needs {HEAD}: run `hitl db upgrade`"
    for args in (
        ["start", "gate", "--payload", "{}"],
        ["approvals", "list"],
        ["runs", "list"],
        ["keys", "create", "--actor", "alice"],
    ):
        res = hitl_cli(*args, env=env)
        assert (res.code, one_line(res)) == (1, behind), args
    res = hitl_cli("health", "--json", env=env)
    assert res.code == 1 and res.json()["schema"] == {
        "status": "outdated",
        "current": "0003",
        "head": HEAD,
        "problem": behind.removeprefix("error: "),
    }
    for args in (["worker", "-c", "1"], ["beat"], ["serve", "--port", str(free_port())]):
        proc = subprocess.run(
            [sys.executable, "-m", "hitl", *args],
            env=process_env(env),
            capture_output=True,
            text=True,
            timeout=90,
            cwd=ROOT,
        )
        assert proc.returncode == 1, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        assert behind in proc.stderr.splitlines(), (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr + proc.stdout

    assert hitl_cli("db", "upgrade", env=env).code == 0
    assert hitl_cli("approvals", "list", "--json", env=env).json() == []
    assert hitl_cli("broker", "stop", env=env).code == 0


def test_health_reports_a_schema_that_fell_behind(home: Path) -> None:
    env = base_env(home, HITL_AUTO_MIGRATE="false")
    assert hitl_cli("db", "upgrade", env=env).code == 0
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1/health"
    log = home / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "hitl", "serve", "--port", str(port)],
            env=process_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    engine = create_engine(f"sqlite:///{home / 'hitl.db'}")

    def answer() -> httpx.Response | None:
        try:
            return httpx.get(url, timeout=5)
        except httpx.HTTPError:
            return None

    try:
        assert wait_for(answer, timeout=60, what="hitl serve").json()["schema"] == "ok"
        downgrade(engine, "0004")  # as an older release's `hitl db downgrade` would leave it
        res = httpx.get(url, timeout=5)
        body = res.json()
        assert (res.status_code, body["status"], body["database"], body["schema"]) == (
            503,
            "degraded",
            "ok",
            "outdated",
        )
        assert body["problem"] == f"database at revision 0004, this hitl needs {HEAD}: run `hitl db upgrade`"
        upgrade(engine)
        res = httpx.get(url, timeout=5)
        assert (res.status_code, res.json()["schema"], res.json()["problem"]) == (200, "ok", None)
    finally:
        engine.dispose()
        stop(serve)
        hitl_cli("broker", "stop", env=env)


def test_unreachable_database_is_one_line_with_the_masked_url(home: Path) -> None:
    port = free_port()
    env = {"HITL_HOME": str(home), "HITL_DATABASE_URL": f"postgresql+psycopg://ops:{DB_PASSWORD}@127.0.0.1:{port}/x"}
    res = hitl_cli("runs", "list", env=env)
    assert res.code == 1
    assert one_line(res).startswith(f"error: database unreachable at postgresql+psycopg://ops:***@127.0.0.1:{port}/x: ")
    assert "Connection refused" in res.err
    assert_no_secret(res.out + res.err, "runs list")


def test_a_misspelt_setting_is_named_with_the_real_one(home: Path) -> None:
    env = {"HITL_HOME": str(home), "HITL_DATABSE_URL": "postgresql+psycopg://x@127.0.0.1:1/x", "HITL_QWXZ": "1"}
    res = hitl_cli("approvals", "list", env=env)
    assert res.code == 0  # the SQLite default, as before; but the operator is told
    assert res.err.splitlines() == [
        "warning: HITL_DATABSE_URL is not a hitl setting and is ignored (did you mean HITL_DATABASE_URL?)",
        "warning: HITL_QWXZ is not a hitl setting and is ignored",
    ]
