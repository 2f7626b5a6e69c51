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
