"""Masking URLs and scrubbing passwords (hitl.infra.redact), and naming misspelt settings (hitl.infra.settings)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from hitl.infra.env import unknown_variables
from hitl.infra.redact import mask_url, scrub
from hitl.infra.settings import Settings


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://hitl:s3cr%40t@db:5432/hitl", "postgresql+psycopg://hitl:***@db:5432/hitl"),
        ("db+postgresql+psycopg://hitl:pw@db/hitl", "db+postgresql+psycopg://hitl:***@db/hitl"),
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://:pw@redis:6379/0?ssl_cert_reqs=required", "rediss://:***@redis:6379/0?ssl_cert_reqs=required"),
        ("amqp://guest:pw@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        ("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379", "sentinel://:***@s1:26379;sentinel://:***@s2:26379"),
        ("redis+socket:///tmp/hitl/redis.sock", "redis+socket:///tmp/hitl/redis.sock"),
        ("sqlite:////tmp/hitl.db", "sqlite:////tmp/hitl.db"),
        (None, ""),
    ],
)
def test_mask_url(url: str | None, masked: str) -> None:
    assert mask_url(url) == masked


def test_scrub_removes_the_settings_passwords_wherever_they_appear() -> None:
    settings = Settings(
        database_url="postgresql+psycopg://hitl:Db%2Fpass@db/hitl",
        broker_url="redis://:brokerpass@redis:6379/0",
        smtp_password=SecretStr("smtppass"),
    )
    text = "failed: Db/pass and Db%2Fpass, brokerpass, smtppass; see https://u:x@host/a"
    assert scrub(text, settings) == "failed: *** and ***, ***, ***; see https://u:***@host/a"


def test_unknown_variables_get_the_closest_real_name() -> None:
    env = {"HITL_DATABSE_URL": "x", "HITL_HOME": ".", "HITL_ZZZQ": "1", "HITL_DEBUG": "1", "PATH": "/bin"}
    assert unknown_variables(env) == [("HITL_DATABSE_URL", "HITL_DATABASE_URL"), ("HITL_ZZZQ", None)]


def test_the_cli_logs_a_failure_on_one_masked_line_without_a_traceback() -> None:
    """A warning or logged exception in a CLI process (say, the audit entry of a refused decision could not be
    written) is one line on stderr, with no URL password, not Python's traceback; HITL_DEBUG=1 adds it, masked."""
    import os
    import subprocess
    import sys

    script = (
        "import logging\n"
        "from hitl.cli.common import log_to_stderr\n"
        "log_to_stderr(); log_to_stderr()\n"  # twice: still one handler
        "try:\n"
        "    raise RuntimeError('cannot reach postgresql://hitl:hunter2@db/hitl\\nsecond line')\n"
        "except RuntimeError:\n"
        "    logging.getLogger('hitl.core.audit').exception('could not write the audit entry')\n"
        "logging.getLogger('hitl').info('not shown')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HITL_DEBUG"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert res.stderr.splitlines() == [
        "error: could not write the audit entry (RuntimeError: cannot reach postgresql://hitl:***@db/hitl; second line)"
    ]
    debug = subprocess.run(
        [sys.executable, "-c", script], env={**env, "HITL_DEBUG": "1"}, capture_output=True, text=True, check=True
    )
    assert "Traceback (most recent call last)" in debug.stderr and "hunter2" not in debug.stderr
