"""The ``hitl audit`` commands: check the audit log's hash chain, and show a run's entries."""

from __future__ import annotations

import click

from hitl.cli import CONTEXT, HitlGroup, cli, json_option


@cli.group(cls=HitlGroup, context_settings=CONTEXT)
def audit() -> None:
    """The append-only audit log of decision attempts, accepted and refused, chained by hashes."""


@audit.command("verify")
@click.option("--anchor", metavar="HASH", help="A head hash printed by an earlier verify; it must still be there.")
@json_option
@click.pass_context
def audit_verify(ctx: click.Context, anchor: str | None, as_json: bool) -> None:
    """Check the whole hash chain; exit 1 naming the first entry that was edited, deleted or moved.

    Removing the newest entries leaves a valid chain: keep the head hash printed here somewhere else
    (a ticket, a log shipper) and pass it as --anchor next time to detect that.
    """
    from hitl.audit import verify
    from hitl.render import print_json

    report = verify(anchor)
    if as_json:
        print_json(report)
    elif report.ok:
        head = f"head entry {report.head_id}, hash {report.head_hash}" if report.head_id is not None else "empty log"
        click.echo(f"audit log intact: {report.checked} entries checked; {head}")
    elif report.broken_id is None:
        click.echo(f"audit log truncated: {report.detail}")
    else:
        click.echo(f"audit log broken at entry {report.broken_id} ({report.problem}): {report.detail}")
        click.echo(f"{report.checked} entries checked; the chain holds up to entry {report.head_id or '-'}")
    if not report.ok:
        ctx.exit(1)


@audit.command("show")
@click.argument("run_id")
@json_option
def audit_show(run_id: str, as_json: bool) -> None:
    """Show the audit entries of RUN_ID, oldest first: decisions, refused attempts, timeouts, cancels."""
    from hitl import views
    from hitl.audit import entries
    from hitl.render import audit_table, console, print_json

    found = entries(run_id=run_id)
    if not found:
        views.get_run(run_id)  # raises RunNotFound for an unknown run
    if as_json:
        print_json(found)
    elif found:
        console.print(audit_table(found))
    else:
        click.echo(f"no audit entries for run {run_id}")
