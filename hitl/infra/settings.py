"""hitl's settings: one pydantic-settings object read from ``HITL_*`` environment variables.

``celeryconfig.py``, the CLI and the engine all read :func:`get_settings`. Durations are in seconds.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from approvals.errors import InvalidSettings
from hitl.infra.env import KNOWN_VARIABLES, warn_unknown_variables

#: A wait declared without a timeout gets this deadline (seconds): one day. Never "forever": a wait whose
#: run was forgotten would otherwise stay pending for good (the orphaned-wait trap of hosted tools).
DEFAULT_WAIT_TIMEOUT_SECONDS = 24 * 3600
#: URL schemes of a Redis server (kombu's and redis-py's spellings).
REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://", "unix://")


class Settings(BaseSettings):
    """Every setting, with its ``HITL_`` environment variable (``home`` is ``HITL_HOME`` and so on)."""

    model_config = SettingsConfigDict(env_prefix="HITL_", extra="ignore", allow_inf_nan=False)

    home: Path = Field(Path(".hitl"), description="Folder of the embedded SQLite file, broker and beat state.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in HITL_HOME.")
    broker_url: str | None = Field(None, description="Celery broker URL; default: the embedded Redis server.")
    result_backend: str | None = Field(
        None,
        description="Celery result backend URL, for chords' joins (only tasks in a group store results); default: "
        "Celery's database backend on hitl's database (db+HITL_DATABASE_URL), which outlives a broker restart.",
    )
    events_url: str | None = Field(
        None,
        description="Redis URL for live events (SSE streams); default: the broker when it is Redis, else the"
        " database (PostgreSQL LISTEN/NOTIFY, or reading the timeline).",
    )
    auto_migrate: bool = Field(True, description="Upgrade the schema to the latest migration on first connect.")
    workflow_modules: list[str] = Field(
        [],
        description='Modules of workflows and their tasks, imported by every hitl process (e.g. ["myapp.flows"]).',
    )
    celery_config: str | None = Field(
        None,
        description="A module of this deployment's own Celery settings, read instead of hitl's defaults: it starts "
        "with `from hitl.infra.celeryconfig import *`. Default: hitl's defaults alone (a project's `celeryconfig` "
        "is not read).",
    )
    default_timeout: float = Field(
        DEFAULT_WAIT_TIMEOUT_SECONDS, gt=0, description="Deadline (s) of a wait declared without one."
    )
    sweep_interval: float = Field(2.0, gt=0, description="Seconds between deadline sweeps on beat.")
    relay_interval: float = Field(10.0, gt=0, description="Seconds between outbox relay passes on beat.")
    relay_grace: float = Field(
        5.0, ge=0, description="Seconds an unsent outbox row may wait before the relay sends it."
    )
    redeliver_after: float = Field(
        600,
        gt=0,
        description="Seconds after which a sent message whose step never started is sent again (then 2x ... 32x that).",
    )
    stall_after: float = Field(
        3600,
        ge=0,
        description="Seconds a pending or running run may go without progress before the relay sends its latest "
        "message again (a message the broker lost), then after 2x ... 32x that; longer than your longest run of "
        "plain tasks; 0: never.",
    )
    outbox_retention: float = Field(7 * 86400, gt=0, description="Seconds delivered outbox rows are kept.")
    step_time_limit: float = Field(900, gt=0, description="Hard time limit (s) of one step; it is killed after.")
    visibility_timeout: float = Field(
        1800, gt=0, description="Seconds before Redis re-delivers a message not acknowledged (a lost worker's)."
    )
    max_payload_bytes: int = Field(256 * 1024, gt=0, description="Largest payload or decision data, in bytes of JSON.")
    inline_payload_bytes: int = Field(
        64 * 1024, gt=0, description="Inputs larger than this (bytes of JSON) are stored once and passed by reference."
    )
    sweep_batch: int = Field(500, gt=0, description="Approvals timed out per sweep transaction.")
    secret_key: SecretStr | None = Field(
        None,
        description="Server secret (HMAC) of signed links, approval tokens and inbox sessions; default: a random"
        " key kept in HITL_HOME/secret.key. Set the same value on every API host.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL of `hitl serve` as people reach it (used in signed links)."
    )
    max_body_bytes: int = Field(1024 * 1024, gt=0, description="Largest HTTP request body the API accepts, in bytes.")
    link_ttl: float = Field(7 * 86400, gt=0, description="Seconds a signed one-click link stays valid.")
    token_ttl: float = Field(86400, gt=0, description="Seconds an approval-scoped token stays valid.")
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Approver groups, JSON: {"editors": ["alice", "bob"]}; merged with `hitl groups` in the database.',
    )
    session_ttl: float = Field(12 * 3600, gt=0, description="Seconds an inbox browser session stays signed in.")
    remind_interval: float = Field(
        10.0, gt=0, description="Seconds between reminder and escalation sweeps on beat (the precision of T1, T2)."
    )
    notify_interval: float = Field(5.0, gt=0, description="Seconds between passes of the notification sender on beat.")
    audit_anchor_interval: float = Field(
        60.0, gt=0, description="Seconds between anchors of the audit log's chains on beat (hitl.anchor_audit)."
    )
    notify_queue: str = Field(
        "hitl.notify",
        min_length=1,
        description="Celery queue of the notification sender; a worker on it alone keeps slow notifiers away"
        " from steps and deadlines (`hitl dev` runs one).",
    )
    notifiers: list[Literal["log", "webhook", "email"]] = Field(
        ["log"], description='Where notices go, JSON list of "log", "webhook", "email".'
    )
    notify_timeout: float = Field(10.0, gt=0, description="Seconds one notifier may take to send one notice.")
    notify_max_attempts: int = Field(8, ge=1, description="Attempts to send a notice before giving up (recorded).")
    notify_backoff: float = Field(
        2.0, gt=0, description="Seconds before the first retry of a failed notice; doubled at each attempt."
    )
    notify_backoff_max: float = Field(600.0, gt=0, description="Longest wait (s) between two attempts of a notice.")
    webhook_url: str | None = Field(None, description="URL the webhook notifier POSTs each notice to, as JSON.")
    smtp_host: str = Field("localhost", description="SMTP server of the email notifier.")
    smtp_port: int = Field(25, ge=1, le=65535, description="Port of the SMTP server.")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS before sending.")
    smtp_username: str | None = Field(None, description="SMTP login, if the server needs one.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password, with HITL_SMTP_USERNAME.")
    smtp_sender: str = Field("hitl@localhost", description="From address of notice emails.")
    email_domain: str | None = Field(
        None,
        description='Address of a user without "@" in their name: name@HITL_EMAIL_DOMAIN (names with "@" are used'
        " as they are; without a domain such users get no email).",
    )

    @model_validator(mode="after")
    def _visibility_outlasts_steps(self) -> Settings:
        # A message must not be re-delivered while its step may still be running (Celery's Redis caveat).
        if self.visibility_timeout <= self.step_time_limit:
            raise ValueError("HITL_VISIBILITY_TIMEOUT must be longer than HITL_STEP_TIME_LIMIT")
        return self

    @model_validator(mode="after")
    def _events_url_is_redis(self) -> Settings:
        if self.events_url and not self.events_url.startswith(REDIS_SCHEMES):
            raise ValueError("HITL_EVENTS_URL must be a Redis URL (redis://, rediss://, redis+socket://)")
        return self

    @model_validator(mode="after")
    def _webhook_has_url(self) -> Settings:
        if "webhook" in self.notifiers and not self.webhook_url:
            raise ValueError("HITL_NOTIFIERS names webhook but HITL_WEBHOOK_URL is not set")
        return self

    @property
    def home_dir(self) -> Path:
        """``home`` as an absolute path, created if missing."""
        path = self.home.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def secret(self) -> bytes:
        """The HMAC secret: ``secret_key``, or a random key created once in ``HITL_HOME/secret.key`` (0600)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.home_dir / "secret.key"
        if not path.exists():
            # Write a temporary file, then hard-link it into place: of racing processes one link wins and
            # every process reads the same complete key.
            tmp = path.with_name(f"secret.key.{os.getpid()}")
            tmp.write_bytes(secrets.token_hex(32).encode())
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_bytes().strip()

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: ``database_url`` or the embedded SQLite file."""
        return self.database_url or f"sqlite:///{self.home_dir / 'hitl.db'}"

    @property
    def resolved_result_backend(self) -> str:
        """The Celery result backend in force: ``result_backend``, or Celery's database backend on hitl's database."""
        return self.result_backend or f"db+{self.resolved_database_url}"

    @property
    def embedded_broker(self) -> bool:
        """True when no broker URL is set and hitl runs its own Redis server."""
        return not self.broker_url


def result_engine_options(backend_url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for Celery's database result backend at ``backend_url``: on SQLite, wait up to
    30 s for the write lock as hitl's own engine does (SQLite allows one writer at a time); none elsewhere."""
    return {"connect_args": {"timeout": 30}} if backend_url.startswith("db+sqlite") else {}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment.

    Raises:
        InvalidSettings: a ``HITL_*`` variable has a value that is not allowed (the message names it).
    """
    warn_unknown_variables(os.environ)
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"HITL_{'_'.join(str(p) for p in e['loc']).upper() or '*'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidSettings(f"invalid settings: {problems}") from exc


def known_variables() -> frozenset[str]:
    """Every ``HITL_*`` variable hitl reads: one per setting, and :data:`hitl.infra.env.OTHER_VARIABLES`."""
    return KNOWN_VARIABLES
