"""``hitl keys``: API keys of the HTTP API (create, list, revoke)."""

from __future__ import annotations

import click

from approvals.status import Scope
from hitl.cli.common import CONTEXT, HitlGroup, json_option

SCOPES = [s.value for s in Scope]


@click.group(cls=HitlGroup, context_settings=CONTEXT)
def keys() -> None:
    """Create, list and revoke API keys (stored hashed; a key is shown once)."""


@keys.command("create")
@click.option("--actor", required=True, help="Who acts with the key; recorded as the decider of its decisions.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(SCOPES),
    help="What the key may do (repeat). read: runs and approvals; start: start runs; decide: approve/reject;"
    " cancel: cancel runs; delegate: make links and approval tokens for others. [default: read, decide]",
)
@click.option("--note", default="", help="What the key is for (shown by `hitl keys list`).")
@json_option
def keys_create(actor: str, scopes: tuple[str, ...], note: str, as_json: bool) -> None:
    """Create an API key for ACTOR and print it (once: only its hash is stored)."""
    from hitl.cli.render import print_json
    from hitl.core.auth import DEFAULT_SCOPES, create_key

    view, secret = create_key(actor, [Scope(s) for s in scopes] or list(DEFAULT_SCOPES), note)
    if as_json:
        print_json({**view.model_dump(mode="json"), "key": secret})
    else:
        click.echo(secret)
        click.echo(f"key {view.id} for {view.actor}: {', '.join(view.scopes)} (shown once; store it now)", err=True)


@keys.command("list")
@json_option
def keys_list(as_json: bool) -> None:
    """List API keys (never their secrets)."""
    from hitl.cli.render import print_json
    from hitl.core.auth import list_keys

    found = list_keys()
    if as_json:
        print_json(found)
        return
    if not found:
        click.echo("no API keys")
    for k in found:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "live"
        click.echo(f"{k.id}  {k.actor:16} {','.join(k.scopes):32} {state:24} {k.note}")


@keys.command("revoke")
@click.argument("key_id")
@json_option
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke KEY_ID: requests with it get 401 and its inbox sessions end."""
    from hitl.cli.render import print_json
    from hitl.core.auth import revoke_key

    revoke_key(key_id)
    print_json({"id": key_id, "revoked": True}) if as_json else click.echo(f"key {key_id} revoked")
