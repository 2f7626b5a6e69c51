"""The ``hitl health`` command: whether this host's hitl can work (database, schema, broker), for operators
and container healthchecks."""

from __future__ import annotations

import click

from hitl.cli.common import json_option


@click.command()
@json_option
def health(as_json: bool) -> None:
    """Check the database, its schema and the broker; exit 0 when all three are ok, else 1.

    \b
    database  answers a query within about a second (its URL is shown with the password masked)
    schema    is at the latest migration this hitl ships (else: run `hitl db upgrade`)
    broker    answers a ping
    The database's schema is upgraded first when HITL_AUTO_MIGRATE is true, as by any command.
    """
    from hitl.cli.render import print_json
    from hitl.core.health import check, schema_status
    from hitl.infra.broker import broker_url
    from hitl.infra.migrate import head_revision
    from hitl.infra.redact import mask_url
    from hitl.infra.settings import get_settings

    db_ok, broker_ok = check()
    current, problem = schema_status() if db_ok else (None, None)
    schema = ("outdated" if problem else "ok") if db_ok else "unknown"
    healthy = db_ok and broker_ok and not problem
    db_url, b_url = mask_url(get_settings().resolved_database_url), mask_url(broker_url())
    if as_json:
        print_json(
            {
                "status": "ok" if healthy else "unhealthy",
                "database": {"status": "ok" if db_ok else "unreachable", "url": db_url},
                "schema": {"status": schema, "current": current, "head": head_revision(), "problem": problem},
                "broker": {"status": "ok" if broker_ok else "unreachable", "url": b_url},
            }
        )
    else:
        click.echo(f"database  {'ok' if db_ok else 'unreachable':12} {db_url}")
        click.echo(f"schema    {schema:12} {problem or f'at revision {current or head_revision()}'}")
        click.echo(f"broker    {'ok' if broker_ok else 'unreachable':12} {b_url}")
    if not healthy:
        raise SystemExit(1)
