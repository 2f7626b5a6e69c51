"""``hitl approvals`` (list, show, create ahead, links, tokens), ``hitl approve`` and ``hitl reject``."""

from __future__ import annotations

import click

from approvals.status import ApprovalStatus
from hitl.cli.common import CONTEXT, HitlGroup, Seconds, json_option

STATUS_CHOICE = click.Choice([s.value for s in ApprovalStatus] + ["all"])


@click.group(cls=HitlGroup, context_settings=CONTEXT)
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
    from hitl.cli.plain import APPROVAL_COLUMNS, approval_cells, print_json, print_table
    from hitl.core.listings import list_approvals

    rows = list_approvals(
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
        print_table(APPROVAL_COLUMNS, [approval_cells(r) for r in rows])
    else:
        click.echo(f"no {'' if status == 'all' else status + ' '}approvals")


@approvals.command("show")
@click.argument("approval_id")
@json_option
def approvals_show(approval_id: str, as_json: bool) -> None:
    """Show what APPROVAL_ID asks, to whom, by when, and its decision."""
    from hitl.cli.render import print_json, show_approval
    from hitl.core.views import get_approval

    view = get_approval(approval_id)
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
    from hitl.cli.render import print_json
    from hitl.core.lookback import create_approval
    from hitl.infra.jsonsafe import parse_json

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
    from hitl.cli.render import print_json
    from hitl.core.auth import link

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
    from hitl.cli.render import print_json
    from hitl.core.auth import approval_token

    token = approval_token(approval_id, actor, ttl)
    print_json({"token": token, "approval_id": approval_id, "actor": actor}) if as_json else click.echo(token)


def _decide(outcome: str, approval_id: str, actor: str, comment: str | None, data: str | None, as_json: bool) -> None:
    from hitl.cli.render import print_json
    from hitl.core.completion import continuation_sent, decide
    from hitl.infra.jsonsafe import parse_json_object

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


@click.command()
@click.argument("approval_id")
@ACTOR
@click.option("--comment", help="Shown in the timeline and passed to the continuation.")
@DATA
@json_option
def approve(approval_id: str, actor: str, comment: str | None, data: str | None, as_json: bool) -> None:
    """Approve APPROVAL_ID; its run resumes with the decision."""
    _decide("approved", approval_id, actor, comment, data, as_json)


@click.command()
@click.argument("approval_id")
@ACTOR
@click.option("--reason", required=True, help="Why; passed to the continuation as the comment.")
@DATA
@json_option
def reject(approval_id: str, actor: str, reason: str, data: str | None, as_json: bool) -> None:
    """Reject APPROVAL_ID; its run resumes with the rejection."""
    _decide("rejected", approval_id, actor, reason, data, as_json)
