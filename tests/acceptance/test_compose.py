"""The shipped docker-compose.yml: its structure, and each service's own command and healthcheck run for real.

No Docker engine runs here, so the file is parsed (PyYAML, with Compose's variable interpolation) and every
service's ``command`` and healthcheck ``test`` from it is started as a process against local servers: the
redis service's command line (plus a loopback port), PostgreSQL from tests/pg.py with a password role, and
the compose hostnames ``redis`` and ``postgres`` mapped to them, as Docker's DNS would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.pg import PgServer, free_port
from tests.support import ROOT, redis_with_password, wait_for

pytestmark = pytest.mark.acceptance

COMPOSE = ROOT / "docker-compose.yml"
HITL_SERVICES = ["migrate", "worker", "notifier", "beat", "flower", "api"]
LONG_RUNNING = ["redis", "postgres", "worker", "notifier", "beat", "flower", "api"]
REQUIRED = ["HITL_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH"]
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:\?|\?|:-|-)(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$`` for a ``$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        name, op, arg = m["name"] or m["bare"], m["op"], m["arg"]
        found = env.get(name)
        if op in (":?", "?") and (not found if op == ":?" else found is None):
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and (not found if op == ":-" else found is None):
            return str(arg)
        return found or ""

    return _VARIABLE.sub(sub, value)


def load(env: dict[str, str]) -> dict[str, Any]:
    return dict(interpolate(yaml.safe_load(COMPOSE.read_text()), env))


SECRETS = {
    "HITL_SECRET_KEY": "k" * 64,
    "POSTGRES_PASSWORD": "Pc0mposeSecret",
    "REDIS_PASSWORD": "Rc0mposeSecret",
    "FLOWER_BASIC_AUTH": "admin:Fc0mposeSecret",
}


def test_every_secret_is_required_and_has_no_default() -> None:
    for name in REQUIRED:
        with pytest.raises(MissingVariable, match=name):
            load({k: v for k, v in SECRETS.items() if k != name})
    text = COMPOSE.read_text()
    assert "change-me" not in text
    for m in re.finditer(r"\$\{(\w*(?:PASSWORD|SECRET|AUTH)\w*)([^}]*)\}", text):
        assert m[2].startswith(":?"), f"{m[0]} has a default or may be empty"


def test_structure_of_the_stack() -> None:
    services = load(SECRETS)["services"]
    assert set(services) == {"redis", "postgres", *HITL_SERVICES}
    envs = [services[name]["environment"] for name in HITL_SERVICES]
    for env in envs:
        assert env["HITL_SECRET_KEY"] == SECRETS["HITL_SECRET_KEY"]
        assert env["HITL_AUTO_MIGRATE"] == "false"
        assert env["HITL_DATABASE_URL"] == envs[0]["HITL_DATABASE_URL"]
        assert env["HITL_BROKER_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
        assert env["HITL_PUBLIC_URL"] == envs[0]["HITL_PUBLIC_URL"]
    migrate = services["migrate"]
    assert migrate["command"] == ["hitl", "db", "upgrade"]
    assert migrate["restart"] == "no" and "healthcheck" not in migrate
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in HITL_SERVICES[1:]:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["postgres"] == depends["redis"] == {"condition": "service_healthy"}, name
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["interval"] and check["retries"], name
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]  # this host only
    assert services["redis"]["command"][-2:] == ["--requirepass", SECRETS["REDIS_PASSWORD"]]


def run_check(check: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a Compose healthcheck ``test`` as Docker would (CMD: exec form; CMD-SHELL: through /bin/sh)."""
    kind, *argv = check["test"]
    args = ["/bin/sh", "-c", argv[0]] if kind == "CMD-SHELL" else argv
    try:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(args, 124, str(exc.stdout), str(exc.stderr))


@pytest.fixture
def stack_env(tmp_path: Path, postgres: PgServer) -> Iterator[tuple[dict[str, Any], dict[str, str], Path]]:
    """The compose services (interpolated) and the environment their processes get on this machine."""
    user = f"compose_{os.getpid()}"
    postgres.create_password_user(user, SECRETS["POSTGRES_PASSWORD"])
    services = load({**SECRETS, "POSTGRES_USER": user, "POSTGRES_DB": user})["services"]
    redis_cmd = services["redis"]["command"]
    shutil.which(redis_cmd[0]) or pytest.skip("redis-server is not on PATH")
    with redis_with_password(tmp_path, SECRETS["REDIS_PASSWORD"], *redis_cmd) as (redis_port, _):
        venv_bin = str(Path(sys.executable).parent)
        base = {
            **os.environ,
            "PATH": f"{venv_bin}:{postgres.bin}:{os.environ.get('PATH', '')}",
            "HOSTNAME": socket.gethostname(),  # Docker sets it to the container's host name
            "HITL_HOME": str(tmp_path / "home"),  # the image's ENV
            "PYTHONPATH": str(ROOT),
            # The data services' healthchecks, pointed at the local servers' ports.
            "REDIS_PORT": str(redis_port),
            "PGHOST": "127.0.0.1",
            "PGPORT": str(postgres.port),
        }
        hosts = {"@redis:6379": f"@127.0.0.1:{redis_port}", "@postgres:5432": f"@127.0.0.1:{postgres.port}"}
        for service in services.values():
            for key, value in list(service.get("environment", {}).items()):
                for host, local in hosts.items():
                    value = str(value).replace(host, local)
                service["environment"][key] = value
        yield services, base, tmp_path


def test_each_service_starts_from_its_command_and_becomes_healthy(
    stack_env: tuple[dict[str, Any], dict[str, str], Path],
) -> None:
    services, base, tmp = stack_env
    redis_env = {**base, **services["redis"]["environment"]}
    wait_for(lambda: run_check(services["redis"]["healthcheck"], redis_env).returncode == 0, timeout=30)
    assert run_check(services["redis"]["healthcheck"], {**redis_env, "REDIS_PASSWORD": "wrong"}).returncode != 0
    pg_env = {**base, **services["postgres"]["environment"]}
    assert run_check(services["postgres"]["healthcheck"], pg_env).returncode == 0

    def env_of(name: str, **extra: str) -> dict[str, str]:
        return {**base, **services[name]["environment"], **extra}

    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, **extra: str) -> dict[str, str]:
        env = env_of(name, **extra)
        with (tmp / f"{name}.log").open("wb") as log:
            procs[name] = subprocess.Popen(
                services[name]["command"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        return env

    api_port, flower_port = free_port(), free_port()
    api_extra = {"HITL_API_PORT": str(api_port), "HITL_API_HOST": "127.0.0.1"}
    try:
        # Before the one-shot migration the API refuses to start (why the others wait for it).
        api_before = subprocess.run(
            services["api"]["command"], env=env_of("api", **api_extra), capture_output=True, text=True, timeout=90
        )
        assert api_before.returncode == 1 and "run `hitl db upgrade`" in api_before.stderr, api_before.stderr

        migrate = subprocess.run(
            services["migrate"]["command"], env=env_of("migrate"), capture_output=True, text=True, timeout=90
        )
        assert migrate.returncode == 0, migrate.stderr
        assert migrate.stdout.strip().endswith("at revision 0005") and ":***@127.0.0.1" in migrate.stdout

        checks = {}
        for name in ["worker", "notifier", "beat", "flower", "api"]:
            extra = api_extra if name == "api" else {}
            if name == "flower":
                extra = {"FLOWER_PORT": str(flower_port), "FLOWER_ADDRESS": "127.0.0.1"}
            checks[name] = start(name, **extra)
        for name, env in checks.items():
            wait_for(
                lambda: run_check(services[name]["healthcheck"], env).returncode == 0,  # noqa: B023 - called here
                timeout=120,
                interval=1,
                what=f"{name}'s healthcheck",
            )
            assert procs[name].poll() is None, name

        # Flower is behind basic auth.
        assert httpx.get(f"http://127.0.0.1:{flower_port}/", timeout=10).status_code == 401
        user, password = services["flower"]["environment"]["FLOWER_BASIC_AUTH"].split(":", 1)
        assert httpx.get(f"http://127.0.0.1:{flower_port}/", auth=(user, password), timeout=10).status_code == 200

        # One secret for all: a link made in the worker container opens on the api.
        worker_env = {**checks["worker"], "HITL_PUBLIC_URL": f"http://127.0.0.1:{api_port}"}
        hitl = [sys.executable, "-m", "hitl"]
        run_id = subprocess.run(
            [*hitl, "start", "content-review", "--payload", "@hitl/examples/content-review.json"],
            env=worker_env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=True,
        ).stdout.strip()  # fmt: skip

        def pending() -> str | None:
            res = subprocess.run(
                [*hitl, "approvals", "list", "--run", run_id, "--json"],
                env=worker_env, capture_output=True, text=True, timeout=60, cwd=ROOT,
            )  # fmt: skip
            import json

            rows = json.loads(res.stdout or "[]")
            return str(rows[0]["id"]) if rows else None

        approval_id = wait_for(pending, timeout=60, interval=1, what="the run to wait for its approval")
        link = subprocess.run(
            [*hitl, "approvals", "link", approval_id, "--for", "alice"],
            env=worker_env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=True,
        ).stdout.strip()  # fmt: skip
        assert httpx.get(link, timeout=10).status_code == 200

        # A healthcheck can fail: a stopped worker no longer answers its ping.
        os.killpg(procs["worker"].pid, signal.SIGTERM)
        procs["worker"].wait(30)
        assert run_check(services["worker"]["healthcheck"], checks["worker"]).returncode != 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    for path in tmp.glob("*.log"):
        text = path.read_text(errors="replace")
        for secret in (SECRETS["POSTGRES_PASSWORD"], SECRETS["REDIS_PASSWORD"], "Fc0mposeSecret"):
            assert secret not in text, f"{path.name} shows a password"
