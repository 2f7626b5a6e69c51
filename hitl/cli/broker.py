"""``hitl broker``: the embedded broker (start, stop) and the broker in force (status)."""

from __future__ import annotations

import click

from hitl.cli.common import CONTEXT, HitlGroup, json_option


@click.group(cls=HitlGroup, context_settings=CONTEXT)
def broker() -> None:
    """The embedded Redis broker (used when HITL_BROKER_URL is unset)."""


@broker.command("start")
def broker_start() -> None:
    """Start the embedded broker if it is not running."""
    from hitl.infra.broker import ensure_broker
    from hitl.infra.redact import mask_url

    click.echo(mask_url(ensure_broker()))


@broker.command("stop")
def broker_stop() -> None:
    """Stop the embedded broker (queued messages are kept in its append-only file)."""
    from hitl.infra.broker import stop_broker

    click.echo("stopped" if stop_broker() else "not running")


@broker.command("status")
@json_option
def broker_status(as_json: bool) -> None:
    """Say whether the broker in force (embedded, or HITL_BROKER_URL of any Celery transport) is embedded
    and running, whether it accepts a connection (checked through kombu), and its URL. Exit 1 when it
    does not answer."""

    from hitl.cli.render import print_json
    from hitl.core.health import broker_problem
    from hitl.infra.broker import broker_url, is_running
    from hitl.infra.events import mode
    from hitl.infra.redact import mask_url
    from hitl.infra.settings import get_settings

    embedded = get_settings().embedded_broker
    running = is_running() if embedded else None
    problem = broker_problem() if running is not False else "not running"
    url = mask_url(broker_url())
    if as_json:
        print_json(
            {
                "url": url,
                "embedded": embedded,
                "running": running,
                "reachable": problem is None,
                "problem": problem,
                "live_events": mode(),
            }
        )
    else:
        state = ("running" if running else "not running") if embedded else "external"
        reach = "" if running is False else ", reachable" if problem is None else f", unreachable: {problem}"
        click.echo(f"{url} ({state}{reach}); live events through {mode()}")
    if problem is not None:
        raise SystemExit(1)
