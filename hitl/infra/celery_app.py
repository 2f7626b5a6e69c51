"""hitl's Celery application object, configured (the tasks are registered by :mod:`hitl.worker`; the entry point
for ``celery -A`` is :mod:`hitl.app`).

Configuration comes from :mod:`hitl.infra.celeryconfig` (hitl's defaults, read from the ``HITL_*`` settings),
or from the module named by ``HITL_CELERY_CONFIG`` (a deployment's own, which starts from those defaults). A
project's own ``celeryconfig`` module is never read by accident. With the embedded default, the worker and beat
start the embedded Redis server if it is not running yet (see :mod:`hitl.infra.broker`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery, signals

from approvals.errors import HitlError
from hitl.infra.broker import ensure_broker
from hitl.infra.settings import get_settings

#: hitl's own Celery configuration module (the defaults a deployment's ``HITL_CELERY_CONFIG`` module starts from).
DEFAULT_CONFIG = "hitl.infra.celeryconfig"

app = Celery("hitl")
app.config_from_object(get_settings().celery_config or DEFAULT_CONFIG)


@signals.import_modules.connect
def _preflight(**_: Any) -> None:
    # Sent by Celery's loader.init_worker(), which the worker, beat (before its scheduler builds the result
    # backend) and each prefork child (whose parent readied the schema already) call before anything else.
    # The embedded broker is started if needed; the schema is upgraded (HITL_AUTO_MIGRATE) or checked once.
    # A process whose database is unreachable or whose schema it cannot use exits at once with one line (a
    # supervisor's restart policy tries again): a worker that went on would fail each step it takes, and
    # Celery's database result backend stops it with a traceback anyway. Once started, a worker rides out a
    # database outage (its steps are requeued).
    try:
        ensure_broker()
        from hitl.infra.db import get_engine

        get_engine()
    except HitlError as exc:
        err = sys.__stderr__ or sys.stderr  # beat's sys.stderr is Celery's logging proxy by now
        err.write(f"error: {exc.message}\n")
        err.flush()
        # At once: nothing has started yet, and beat's schedule file fails to pickle during a normal exit.
        os._exit(1)


def reconfigure() -> None:
    """Re-read the broker URL from the settings in force, after this process changed ``HITL_*`` variables.

    For embedding and tests: a process normally reads its settings once, when its Celery configuration is
    imported.
    The broker connection pools are dropped; the next publish connects to the new URL.
    """
    from hitl.infra.broker import broker_url
    from hitl.infra.settings import get_settings, result_engine_options

    app.conf.broker_url = broker_url()
    app.conf.result_backend = get_settings().resolved_result_backend
    app.conf.database_engine_options = result_engine_options(app.conf.result_backend)
    app._after_fork()  # Celery's own reset of the connection and producer pools
    app._local.__dict__.pop("backend", None)  # the result backend is made again from the new URL
