"""``hitl notifications``: the notices hitl wrote (reminders, escalations) and their delivery."""

from __future__ import annotations

import click

from hitl.cli.common import CONTEXT, HitlGroup, json_option


@click.group(cls=HitlGroup, context_settings=CONTEXT)
def notifications() -> None:
    """Reminders and escalation notices, and whether they were delivered."""


@notifications.command("list")
@click.option("--approval", "approval_id", metavar="ID", help="Only notices about this approval.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, help="At most this many, newest first.")
@json_option
def notifications_list(approval_id: str | None, limit: int, as_json: bool) -> None:
    """List notices, newest first: kind, number, recipients, attempts, sent or not, last error."""
    from hitl.cli.render import console, notifications_table, print_json
    from hitl.core.views import list_notifications

    rows = list_notifications(approval_id, limit)
    if as_json:
        print_json(rows)
    elif rows:
        console.print(notifications_table(rows))
    else:
        click.echo("no notifications")
