"""The few settings a short command needs, read from the environment without pydantic.

``hitl approvals list`` and ``hitl runs list`` need only the database: ``HITL_HOME``, ``HITL_DATABASE_URL`` and
``HITL_AUTO_MIGRATE``. Importing pydantic-settings costs such a command about a third of its wall time, so
these three are read here, exactly as :class:`hitl.infra.settings.Settings` reads them (names matched without
regard to case, an empty database URL meaning none). A value this module cannot read the same way
(``HITL_AUTO_MIGRATE=maybe``) is refused with the error ``Settings`` gives (:class:`approvals.errors.InvalidSettings`).

The names of every ``HITL_*`` variable hitl reads live here too, for the misspelt-variable warning every
process prints; ``tests/unit/test_env.py`` checks them and the three readers against ``Settings``.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

#: Every setting of :class:`hitl.infra.settings.Settings`, by field name (``HITL_`` + the upper-case name).
SETTING_NAMES = (
    "home",
    "database_url",
    "broker_url",
    "result_backend",
    "events_url",
    "auto_migrate",
    "workflow_modules",
    "celery_config",
    "default_timeout",
    "sweep_interval",
    "relay_interval",
    "relay_grace",
    "redeliver_after",
    "stall_after",
    "outbox_retention",
    "step_time_limit",
    "visibility_timeout",
    "max_payload_bytes",
    "inline_payload_bytes",
    "sweep_batch",
    "secret_key",
    "public_url",
    "max_body_bytes",
    "link_ttl",
    "token_ttl",
    "groups",
    "session_ttl",
    "remind_interval",
    "notify_interval",
    "audit_anchor_interval",
    "notify_queue",
    "notifiers",
    "notify_timeout",
    "notify_max_attempts",
    "notify_backoff",
    "notify_backoff_max",
    "webhook_url",
    "smtp_host",
    "smtp_port",
    "smtp_starttls",
    "smtp_username",
    "smtp_password",
    "smtp_sender",
    "email_domain",
)
#: ``HITL_*`` variables that are not settings but are read elsewhere: by CLI options (``HITL_ACTOR``,
#: ``HITL_API_HOST``, ``HITL_API_PORT``, ``HITL_API_WORKERS``), for tracebacks (``HITL_DEBUG``), and by the
#: tests and benchmarks.
OTHER_VARIABLES = frozenset(
    {"HITL_ACTOR", "HITL_API_HOST", "HITL_API_PORT", "HITL_API_WORKERS", "HITL_DEBUG"}
    | {"HITL_TEST_CHROMIUM", "HITL_TEST_WORKERS"}
    | {"HITL_BENCH_DBOS_PYTHON"}
)
#: Every ``HITL_*`` variable hitl reads.
KNOWN_VARIABLES = frozenset(f"HITL_{name.upper()}" for name in SETTING_NAMES) | OTHER_VARIABLES
#: The spellings of a boolean pydantic accepts (https://docs.pydantic.dev/latest/api/standard_library_types/#booleans).
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _get(name: str) -> str | None:
    """The value of setting ``name`` (``HITL_`` + name, any case), as pydantic-settings finds it."""
    wanted = f"hitl_{name}"
    for key, value in os.environ.items():
        if key.lower() == wanted:
            return value
    return None


def home_dir() -> Path:
    """``HITL_HOME`` (default ``.hitl``) as an absolute path, created if missing."""
    value = _get("home")
    path = Path(".hitl" if value is None else value).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str:
    """The database URL in force: ``HITL_DATABASE_URL``, or the embedded SQLite file in ``HITL_HOME``
    (the same as ``Settings.resolved_database_url``)."""
    return _get("database_url") or f"sqlite:///{home_dir() / 'hitl.db'}"


def auto_migrate() -> bool:
    """``HITL_AUTO_MIGRATE`` (default true).

    Raises:
        InvalidSettings: the value is not a boolean (pydantic's spellings), with the message ``Settings`` gives.
    """
    value = _get("auto_migrate")
    if value is None:
        return True
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    from approvals.errors import InvalidSettings

    raise InvalidSettings(
        "invalid settings: HITL_AUTO_MIGRATE: Input should be a valid boolean, unable to interpret input"
    )


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Return the ``HITL_*`` names in ``environ`` that hitl does not read, each with the closest real name
    (``difflib.get_close_matches`` with a cutoff of 0.8: a typo, not any other name) or None, sorted by name."""
    return [
        (name, next(iter(difflib.get_close_matches(name.upper(), KNOWN_VARIABLES, n=1, cutoff=0.8)), None))
        for name in sorted(environ)
        if name.upper().startswith("HITL_") and name.upper() not in KNOWN_VARIABLES
    ]


def warn_unknown_variables(environ: Mapping[str, str] = os.environ) -> None:
    """Warn once per process about each ``HITL_*`` variable in ``environ`` that hitl does not read (a misspelt
    setting is otherwise silently ignored): through logging once it is configured (a worker's log), else on
    stderr as ``warning: ...``."""
    for name, match in unknown_variables(environ):
        if name in _warned:
            continue
        _warned.add(name)
        message = f"{name} is not a hitl setting and is ignored" + (f" (did you mean {match}?)" if match else "")
        if logging.getLogger().handlers:
            log.warning(message)
        else:
            sys.stderr.write(f"warning: {message}\n")
