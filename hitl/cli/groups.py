"""``hitl groups``: approver groups (list, add and remove members)."""

from __future__ import annotations

import click

from hitl.cli.common import CONTEXT, HitlGroup, json_option


@click.group(cls=HitlGroup, context_settings=CONTEXT)
def groups() -> None:
    """Approver groups: list them, add and remove members (HITL_GROUPS adds groups from settings)."""


@groups.command("list")
@json_option
def groups_list(as_json: bool) -> None:
    """List every group and its members (settings and database)."""
    from hitl.cli.render import print_json
    from hitl.core.groups import all_groups

    found = all_groups()
    if as_json:
        print_json({"groups": found})
        return
    if not found:
        click.echo("no groups")
    for name, members in found.items():
        click.echo(f"{name:20} {', '.join(members)}")


@groups.command("add")
@click.argument("group")
@click.argument("members", nargs=-1, required=True)
def groups_add(group: str, members: tuple[str, ...]) -> None:
    """Add MEMBERS to GROUP (created if new)."""
    from hitl.core.groups import add_member

    added = [m for m in members if add_member(group, m)]
    click.echo(f"{group}: added {', '.join(added) or 'nobody new'}")


@groups.command("remove")
@click.argument("group")
@click.argument("members", nargs=-1, required=True)
def groups_remove(group: str, members: tuple[str, ...]) -> None:
    """Remove MEMBERS from GROUP (members from HITL_GROUPS stay: change the setting)."""
    from hitl.core.groups import remove_member

    removed = [m for m in members if remove_member(group, m)]
    click.echo(f"{group}: removed {', '.join(removed) or 'nobody'}")
