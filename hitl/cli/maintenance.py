"""``hitl sweep`` and ``hitl relay``: run a beat job's pass once, now."""

from __future__ import annotations

import click

from hitl.cli.common import json_option


@click.command()
@json_option
def sweep(as_json: bool) -> None:
    """Time out due approvals now (beat does this every HITL_SWEEP_INTERVAL seconds)."""
    from hitl.cli.render import print_json
    from hitl.core.deadlines import sweep as sweep_deadlines

    done = sweep_deadlines()
    print_json({"timed_out": done}) if as_json else click.echo(f"{done} approval(s) timed out")


@click.command()
@json_option
def relay(as_json: bool) -> None:
    """Send outbox messages left unsent (beat does this every HITL_RELAY_INTERVAL seconds)."""
    from hitl.cli.render import print_json
    from hitl.delivery.outbox import relay as relay_now

    sent = relay_now(grace_seconds=0)
    print_json({"sent": sent}) if as_json else click.echo(f"{sent} message(s) sent")
