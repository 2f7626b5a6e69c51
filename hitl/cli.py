"""The ``hitl`` command: start workflows, list and decide approvals, inspect and cancel runs, run services.

Exit codes: 0 success; 1 a domain error (not found, already decided, expired, cancelled) or a failure of the
database or broker, with one line on stderr; 2 a usage or validation error (bad option, malformed JSON, a
payload that fails its schema).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from approvals.errors import HitlError
from approvals.status import ApprovalStatus, RunStatus

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True}


class HitlGroup(click.Group):
    """A click group that turns hitl's errors into a one-line message and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HitlError as exc:
            from hitl.redact import scrub

            click.echo(f"error: {scrub(exc.message)}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("HITL_DEBUG"):
                raise
            from hitl.redact import one_line, scrub

            click.echo(
                f"error: internal error: {type(exc).__name__}: {scrub(one_line(str(exc)))}"
                " (HITL_DEBUG=1 shows the traceback)",
                err=True,
            )
            ctx.exit(1)


class Seconds(click.FloatRange):
    """A finite number of seconds within bounds (click's ``FloatRange`` lets ``nan`` through)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


def json_option(fn: F) -> F:
    """Add ``--json`` (machine-readable output on stdout) to a command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def _set_env(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # Global options are settings: export them so worker and beat children see the same values.
    if value is not None:
        os.environ[f"HITL_{(param.name or '').upper()}"] = str(value)
        from hitl.settings import get_settings

        get_settings.cache_clear()
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


@cli.command()
@click.argument("workflow")
@click.option("--payload", default="null", metavar="JSON|@FILE", help="Input of the run, JSON or @path to a JSON file.")
@click.option("--idempotency-key", metavar="KEY", help="Same key twice gives the same run (nothing new started).")
@click.option(
    "--by", "requester", envvar="HITL_ACTOR", show_envvar=True, help="Who asks (a wait may forbid them to decide)."
)
@json_option
def start(workflow: str, payload: str, idempotency_key: str | None, requester: str | None, as_json: bool) -> None:
    """Start a run of WORKFLOW and print its run id."""
    import hitl
    from hitl.jsonsafe import parse_json
    from hitl.render import print_json

    run_id = hitl.start(
        workflow, parse_json(payload, "--payload"), idempotency_key=idempotency_key, requester=requester
    )
    if as_json:
        print_json({"run_id": run_id})
    else:
        click.echo(run_id)


@cli.command()
@json_option
def workflows(as_json: bool) -> None:
    """List the registered workflows: name, description and shape (its canvas in run order, built from a
    sample payload; --json adds each input schema)."""
    from hitl.registry import all_workflows
    from hitl.render import print_json

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


# ---------------------------------------------------------------- approvals

STATUS_CHOICE = click.Choice([s.value for s in ApprovalStatus] + ["all"])


@cli.group(cls=HitlGroup, context_settings=CONTEXT)
def approvals() -> None:
    """List and inspect approvals (decide them with `hitl approve` / `hitl reject`)."""


@approvals.command("list")
@click.option("--status", type=STATUS_CHOICE, default="pending", help="Only approvals in this status.")
@click.option("--workflow", help="Only approvals of this workflow.")
@click.option("--run", "run_id", metavar="RUN", help="Only approvals of this run.")
@click.option(
    "--older-than",
    type=Seconds(0, 100 * 365 * 86400),
    metavar="SECONDS",
    help="Only approvals at least this old.",
)
@click.option("--assignee", metavar="NAME", help="Only approvals assigned to this user or group.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, help="At most this many, oldest first.")
@json_option
def approvals_list(
    status: str,
    workflow: str | None,
    run_id: str | None,
    older_than: float | None,
    assignee: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List approvals, oldest first (pending ones by default)."""
    import hitl
    from hitl.render import approvals_table, console, print_json

    rows = hitl.list_approvals(
        status=None if status == "all" else ApprovalStatus(status),
        workflow=workflow,
        run_id=run_id,
        older_than=older_than,
        limit=limit,
        assignee=assignee,
    )
    if as_json:
        print_json(rows)
    elif rows:
        console.print(approvals_table(rows))
    else:
        click.echo(f"no {'' if status == 'all' else status + ' '}approvals")


@approvals.command("show")
@click.argument("approval_id")
@json_option
def approvals_show(approval_id: str, as_json: bool) -> None:
    """Show what APPROVAL_ID asks, to whom, by when, and its decision."""
    import hitl
    from hitl.render import print_json, show_approval

    view = hitl.get_approval(approval_id)
    print_json(view) if as_json else show_approval(view)


@approvals.command("create")
@click.argument("key")
@click.option("--idempotency-key", required=True, help="The wait step declaring this key takes the approval.")
@click.option("--subject", default="null", metavar="JSON|@FILE", help="What is to be reviewed.")
@click.option("--assignee", "assignees", multiple=True, help="A user or group who may decide (repeat).")
@click.option("--timeout", metavar="DURATION", help="Seconds or 30s/15m/1h/2d. [default: HITL_DEFAULT_TIMEOUT]")
@json_option
def approvals_create(
    key: str, idempotency_key: str, subject: str, assignees: tuple[str, ...], timeout: str | None, as_json: bool
) -> None:
    """Create an approval ahead of its wait step (early completion): decide it now, and the run's wait with
    the same idempotency key goes on at once. Idempotent: the same key prints the same approval."""
    from hitl.jsonsafe import parse_json
    from hitl.lookback import create_approval
    from hitl.render import print_json

    view = create_approval(
        key,
        idempotency_key=idempotency_key,
        subject=parse_json(subject, "--subject"),
        assignees=assignees,
        timeout=timeout,
    )
    print_json(view) if as_json else click.echo(view.id)


TTL = click.option(
    "--ttl",
    type=Seconds(min=1, max=90 * 86400),
    metavar="SECONDS",
    help="How long it stays valid. [default: HITL_LINK_TTL / HITL_TOKEN_TTL]",
)


@approvals.command("link")
@click.argument("approval_id")
@click.option("--for", "actor", required=True, help="Who the link is for; recorded as the decider.")
@click.option("--action", type=click.Choice(["approve", "reject"]), default="approve", help="What the link does.")
@TTL
@json_option
def approvals_link(approval_id: str, actor: str, action: str, ttl: float | None, as_json: bool) -> None:
    """Print a signed one-click link for email or chat: one person, one action, expiring, single use.

    The link opens a page under HITL_PUBLIC_URL (served by `hitl serve`) with the request and one button;
    opening it decides nothing, so mail scanners that prefetch links cannot approve.
    """
    from hitl.auth import link
    from hitl.render import print_json

    url = link(approval_id, actor, action, ttl)
    print_json({"url": url, "approval_id": approval_id, "actor": actor, "action": action}) if as_json else click.echo(
        url
    )


@approvals.command("token")
@click.argument("approval_id")
@click.option("--for", "actor", required=True, help="Who the token is for; recorded as the decider.")
@TTL
@json_option
def approvals_token(approval_id: str, actor: str, ttl: float | None, as_json: bool) -> None:
    """Print a token that reads and decides APPROVAL_ID only (safe to hand to a browser approval card)."""
    from hitl.auth import approval_token
    from hitl.render import print_json

    token = approval_token(approval_id, actor, ttl)
    print_json({"token": token, "approval_id": approval_id, "actor": actor}) if as_json else click.echo(token)


def _decide(outcome: str, approval_id: str, actor: str, comment: str | None, data: str | None, as_json: bool) -> None:
    from hitl.completion import continuation_sent, decide
    from hitl.jsonsafe import parse_json_object
    from hitl.render import print_json

    parsed = parse_json_object(data, "--data") if data is not None else None
    decision = decide(approval_id, outcome, actor=actor, comment=comment, data=parsed, channel="cli")
    sent = continuation_sent(approval_id)
    if as_json:
        print_json({**decision.model_dump(mode="json"), "continuation_sent": sent})
    elif not decision.settled:
        click.echo(
            f"{approval_id}: {decision.actor} voted {decision.outcome.value} ({len(decision.votes)} vote(s) so far);"
            " waiting for more votes"
        )
    elif sent is False:
        click.echo(
            f"{approval_id} {decision.outcome.value} by {decision.actor} (recorded); the broker is unreachable, so"
            f" run {decision.run_id} resumes when it is back (the outbox relay sends the continuation)"
        )
    else:
        click.echo(f"{approval_id} {decision.outcome.value} by {decision.actor}; run {decision.run_id} resumes")


ACTOR = click.option(
    "--by", "actor", envvar="HITL_ACTOR", show_envvar=True, required=True, help="Who decides (recorded as the decider)."
)
DATA = click.option("--data", metavar="JSON|@FILE", help="A JSON object passed to the continuation.")


@cli.command()
@click.argument("approval_id")
@ACTOR
@click.option("--comment", help="Shown in the timeline and passed to the continuation.")
@DATA
@json_option
def approve(approval_id: str, actor: str, comment: str | None, data: str | None, as_json: bool) -> None:
    """Approve APPROVAL_ID; its run resumes with the decision."""
    _decide("approved", approval_id, actor, comment, data, as_json)


@cli.command()
@click.argument("approval_id")
@ACTOR
@click.option("--reason", required=True, help="Why; passed to the continuation as the comment.")
@DATA
@json_option
def reject(approval_id: str, actor: str, reason: str, data: str | None, as_json: bool) -> None:
    """Reject APPROVAL_ID; its run resumes with the rejection."""
    _decide("rejected", approval_id, actor, reason, data, as_json)


@cli.group(cls=HitlGroup, context_settings=CONTEXT)
def notifications() -> None:
    """Reminders and escalation notices, and whether they were delivered."""


@notifications.command("list")
@click.option("--approval", "approval_id", metavar="ID", help="Only notices about this approval.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, help="At most this many, newest first.")
@json_option
def notifications_list(approval_id: str | None, limit: int, as_json: bool) -> None:
    """List notices, newest first: kind, number, recipients, attempts, sent or not, last error."""
    from hitl.render import console, notifications_table, print_json
    from hitl.views import list_notifications

    rows = list_notifications(approval_id, limit)
    if as_json:
        print_json(rows)
    elif rows:
        console.print(notifications_table(rows))
    else:
        click.echo("no notifications")


# ---------------------------------------------------------------- runs


@cli.group(cls=HitlGroup, context_settings=CONTEXT)
def runs() -> None:
    """List, inspect and cancel runs."""


@runs.command("list")
@click.option("--status", type=click.Choice([s.value for s in RunStatus]), help="Only runs in this status.")
@click.option("--workflow", help="Only runs of this workflow.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, help="At most this many, newest first.")
@json_option
def runs_list(status: str | None, workflow: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    import hitl
    from hitl.render import console, print_json, runs_table

    rows = hitl.list_runs(status=RunStatus(status) if status else None, workflow=workflow, limit=limit)
    if as_json:
        print_json(rows)
    elif rows:
        console.print(runs_table(rows))
    else:
        click.echo("no runs")


@runs.command("show")
@click.argument("run_id")
@json_option
def runs_show(run_id: str, as_json: bool) -> None:
    """Show RUN_ID: status, result, and its timeline of steps, waits and decisions."""
    import hitl
    from hitl.render import print_json, show_run

    view = hitl.get_run(run_id)
    print_json(view) if as_json else show_run(view)


@runs.command("cancel")
@click.argument("run_id")
@click.option("--by", "actor", envvar="HITL_ACTOR", show_envvar=True, default="operator", help="Who cancels.")
@click.option("--reason", help="Recorded on the run.")
@json_option
def runs_cancel(run_id: str, actor: str, reason: str | None, as_json: bool) -> None:
    """Cancel RUN_ID and its pending approvals (deciding them afterwards is an error)."""
    import hitl
    from hitl.render import print_json

    cancelled = hitl.cancel(run_id, actor=actor, reason=reason, channel="cli")
    if as_json:
        print_json({"run_id": run_id, "status": "cancelled", "cancelled_approvals": cancelled})
    else:
        click.echo(f"run {run_id} cancelled ({len(cancelled)} pending approval(s) cancelled)")


def main() -> None:
    """Console-script entry point."""
    from hitl import audit_cli, health_cli, services  # noqa: F401 - registers worker, beat, dev, demo, broker, db; audit; health

    cli(prog_name="hitl")


if __name__ == "__main__":  # pragma: no cover
    main()
