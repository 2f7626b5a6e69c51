"""The ``hitl audit`` commands: check the audit log's hash chains and anchors, and show a run's chain."""

from __future__ import annotations

import click

from hitl.cli.common import CONTEXT, HitlGroup, json_option


@click.group(cls=HitlGroup, context_settings=CONTEXT)
def audit() -> None:
    """The append-only audit log of decision attempts, accepted and refused, in hash chains per run."""


@audit.command("verify")
@click.option(
    "--anchor", metavar="HASH", help="A head hash printed by an earlier verify; some entry must still have it."
)
@json_option
@click.pass_context
def audit_verify(ctx: click.Context, anchor: str | None, as_json: bool) -> None:
    """Check every chain and anchor; exit 1 naming the first entry edited, deleted, moved or cut off.

    Each run has its own hash chain, and beat's anchors (every HITL_AUDIT_ANCHOR_INTERVAL s) record every
    chain's head, so a chain cut before its last anchor is found. Removing the newest anchors leaves a valid
    anchor chain: keep the head hash printed here somewhere else (a ticket, a log shipper) and pass it as
    --anchor next time to detect that too.
    """
    from hitl.cli.render import print_json
    from hitl.core.audit import verify

    report = verify(anchor)
    if as_json:
        print_json(report)
    elif report.ok:
        head = (
            f"anchor head entry {report.head_id}, hash {report.head_hash}"
            if report.head_id is not None
            else "no anchor yet (beat's hitl.anchor_audit writes them)"
        )
        click.echo(f"audit log intact: {report.checked} entries in {report.chains} chains checked; {head}")
    elif report.broken_id is None:
        click.echo(f"audit log truncated: {report.detail}")
    else:
        click.echo(
            f"audit log broken at entry {report.broken_id} of chain {report.chain} ({report.problem}): {report.detail}"
        )
        click.echo(f"{report.checked} entries checked; chain {report.chain} holds up to entry {report.head_id or '-'}")
    if not report.ok:
        ctx.exit(1)


@audit.command("show")
@click.argument("run_id")
@json_option
def audit_show(run_id: str, as_json: bool) -> None:
    """Show the audit entries of RUN_ID, oldest first: decisions, refused attempts, timeouts, cancels.

    They are the run's chain, with the entries on approvals the run took after they were created ahead
    (chain approval:ID) and those written before the audit log had chains (chain legacy).
    """
    from hitl.cli.render import audit_table, console, print_json
    from hitl.core import views
    from hitl.core.audit import entries

    found = entries(run_id=run_id)
    if not found:
        views.get_run(run_id)  # raises RunNotFound for an unknown run
    if as_json:
        print_json(found)
    elif found:
        console.print(audit_table(found))
    else:
        click.echo(f"no audit entries for run {run_id}")
