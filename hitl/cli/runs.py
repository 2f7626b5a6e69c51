"""``hitl start``, ``hitl workflows`` and ``hitl runs``: start runs and inspect or cancel them."""

from __future__ import annotations

import click

from approvals.status import RunStatus
from hitl.cli.common import CONTEXT, HitlGroup, json_option


@click.command()
@click.argument("workflow")
@click.option("--payload", default="null", metavar="JSON|@FILE", help="Input of the run, JSON or @path to a JSON file.")
@click.option("--idempotency-key", metavar="KEY", help="Same key twice gives the same run (nothing new started).")
@click.option(
    "--by", "requester", envvar="HITL_ACTOR", show_envvar=True, help="Who asks (a wait may forbid them to decide)."
)
@json_option
def start(workflow: str, payload: str, idempotency_key: str | None, requester: str | None, as_json: bool) -> None:
    """Start a run of WORKFLOW and print its run id."""
    from hitl.cli.render import print_json
    from hitl.core.runs import start
    from hitl.infra.jsonsafe import parse_json

    run_id = start(workflow, parse_json(payload, "--payload"), idempotency_key=idempotency_key, requester=requester)
    if as_json:
        print_json({"run_id": run_id})
    else:
        click.echo(run_id)


@click.command()
@json_option
def workflows(as_json: bool) -> None:
    """List the registered workflows: name, description and shape (its canvas in run order, built from a
    sample payload; --json adds each input schema)."""
    from hitl.cli.render import print_json
    from hitl.core.registry import all_workflows

    found = all_workflows()
    if as_json:
        print_json(
            {
                "workflows": [
                    {
                        "name": w.name,
                        "description": w.description,
                        "input_schema": w.input_model.model_json_schema() if w.input_model else None,
                        "shape": w.shape,
                    }
                    for w in found
                ]
            }
        )
        return
    for w in found:
        click.echo(f"{w.name:20} {w.description}")
        click.echo(f"{'':20} {w.shape or '(built from each payload)'}")


@click.group(cls=HitlGroup, context_settings=CONTEXT)
def runs() -> None:
    """List, inspect and cancel runs."""


@runs.command("list")
@click.option("--status", type=click.Choice([s.value for s in RunStatus]), help="Only runs in this status.")
@click.option("--workflow", help="Only runs of this workflow.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, help="At most this many, newest first.")
@json_option
def runs_list(status: str | None, workflow: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    from hitl.cli.plain import RUN_COLUMNS, print_json, print_table, run_cells
    from hitl.core.listings import list_runs

    rows = list_runs(status=RunStatus(status) if status else None, workflow=workflow, limit=limit)
    if as_json:
        print_json(rows)
    elif rows:
        print_table(RUN_COLUMNS, [run_cells(r) for r in rows])
    else:
        click.echo("no runs")


@runs.command("show")
@click.argument("run_id")
@json_option
def runs_show(run_id: str, as_json: bool) -> None:
    """Show RUN_ID: status, result, and its timeline of steps, waits and decisions."""
    from hitl.cli.render import print_json, show_run
    from hitl.core.views import get_run

    view = get_run(run_id)
    print_json(view) if as_json else show_run(view)


@runs.command("cancel")
@click.argument("run_id")
@click.option("--by", "actor", envvar="HITL_ACTOR", show_envvar=True, default="operator", help="Who cancels.")
@click.option("--reason", help="Recorded on the run.")
@json_option
def runs_cancel(run_id: str, actor: str, reason: str | None, as_json: bool) -> None:
    """Cancel RUN_ID and its pending approvals (deciding them afterwards is an error)."""
    from hitl.cli.render import print_json
    from hitl.core.runs import cancel

    cancelled = cancel(run_id, actor=actor, reason=reason, channel="cli")
    if as_json:
        print_json({"run_id": run_id, "status": "cancelled", "cancelled_approvals": cancelled})
    else:
        click.echo(f"run {run_id} cancelled ({len(cancelled)} pending approval(s) cancelled)")
