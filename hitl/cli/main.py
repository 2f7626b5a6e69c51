"""The ``hitl`` command: start workflows, list and decide approvals, inspect and cancel runs, run services.

The root group (:data:`cli`) is built here from one module per command group (``add_command``, as Celery's
``celery/bin/celery.py`` builds ``celery``), so ``hitl.cli.cli`` imported alone is the whole command line.

Exit codes: 0 success; 1 a domain error (not found, already decided, expired, cancelled) or a failure of the
database or broker, with one line on stderr; 2 a usage or validation error (bad option, malformed JSON, a
payload that fails its schema).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from hitl.cli.approvals import approvals, approve, reject
from hitl.cli.audit import audit
from hitl.cli.broker import broker
from hitl.cli.common import CONTEXT, HitlGroup
from hitl.cli.db import db
from hitl.cli.groups import groups
from hitl.cli.health import health
from hitl.cli.keys import keys
from hitl.cli.maintenance import relay, sweep
from hitl.cli.notifications import notifications
from hitl.cli.processes import beat, demo, dev, flower, serve, worker
from hitl.cli.runs import runs, start, workflows


def _set_env(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # Global options are settings: export them so worker and beat children see the same values.
    if value is not None:
        os.environ[f"HITL_{(param.name or '').upper()}"] = str(value)
        settings = sys.modules.get("hitl.infra.settings")  # (read already? then read again; else not imported)
        if settings is not None:
            settings.get_settings.cache_clear()
    return value


@click.group(cls=HitlGroup, context_settings=CONTEXT)
@click.option(
    "--home",
    envvar="HITL_HOME",
    show_envvar=True,
    callback=_set_env,
    expose_value=False,
    is_eager=True,
    help="Folder of the embedded database, broker and beat state. [default: .hitl]",
)
@click.option(
    "--database-url",
    envvar="HITL_DATABASE_URL",
    show_envvar=True,
    callback=_set_env,
    expose_value=False,
    is_eager=True,
    help="SQLAlchemy database URL. [default: SQLite file in home]",
)
@click.option(
    "--broker-url",
    envvar="HITL_BROKER_URL",
    show_envvar=True,
    callback=_set_env,
    expose_value=False,
    is_eager=True,
    help="Celery broker URL. [default: embedded Redis server in home]",
)
@click.version_option(package_name="hitl")
def cli() -> None:
    """Human-in-the-loop approvals for Celery.

    \b
    Typical session (embedded default: nothing to install beyond hitl):
      hitl dev                                  # terminal 1: broker, worker and beat
      hitl start content-review --payload '{"topic": "tides"}'
      hitl approvals list
      hitl approve APPROVAL_ID --by alice --comment "ok"
      hitl runs show RUN_ID
    """
    from hitl.infra.env import warn_unknown_variables

    warn_unknown_variables()


for command in (
    start,
    workflows,
    approvals,
    approve,
    reject,
    runs,
    notifications,
    groups,
    keys,
    audit,
    health,
    worker,
    beat,
    flower,
    dev,
    serve,
    demo,
    broker,
    db,
    sweep,
    relay,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hitl")


if __name__ == "__main__":  # pragma: no cover
    main()
