"""CLI commands that run services: worker, beat, flower, dev, demo, and the embedded broker and database."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from approvals.status import Scope
from hitl.cli import CONTEXT, HitlGroup, cli, json_option

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _exec_celery(*args: str) -> None:
    from hitl.broker import ensure_broker
    from hitl.procs import celery_argv

    ensure_broker()
    argv = celery_argv(*args)
    os.execv(argv[0], argv)


@cli.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, help="Worker processes.")
@click.option("--loglevel", "-l", default="INFO", help="Celery log level.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int, loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker for hitl (extra arguments go to `celery worker`).

    Without -Q it consumes every queue: steps and beat jobs ("celery") and notices (HITL_NOTIFY_QUEUE).
    To keep slow notifiers away from steps and deadlines, run `hitl worker -Q celery` and, beside it,
    `hitl worker -Q hitl.notify -P threads -c 4`.
    """
    _exec_celery("worker", "--concurrency", str(concurrency), "--loglevel", loglevel, "--events", *celery_args)


@cli.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--loglevel", "-l", default="INFO", help="Celery log level.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run Celery beat: deadline sweep, outbox relay and cron jobs (extra arguments go to `celery beat`)."""
    _exec_celery("beat", "--loglevel", loglevel, *celery_args)


@cli.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Run Flower to watch workers and steps live (extra arguments go to `celery flower`, e.g. --port=5555)."""
    _exec_celery("flower", *flower_args)


@cli.command()
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, help="Worker processes.")
def dev(concurrency: int) -> None:
    """Run the embedded broker, a worker, a notifier worker and beat in this terminal until Ctrl-C.

    The notifier worker consumes the notify queue (HITL_NOTIFY_QUEUE) alone, so a slow webhook or mail
    server never holds a process that runs steps or sweeps deadlines.
    Use a second terminal for `hitl start`, `hitl approvals list`, `hitl approve`.
    """
    from hitl.broker import broker_url, ensure_broker
    from hitl.db import get_engine
    from hitl.procs import Service, start_beat, start_notifier, start_worker
    from hitl.redact import mask_url
    from hitl.settings import get_settings

    settings = get_settings()
    ensure_broker()
    get_engine()
    click.echo(f"hitl dev: broker {mask_url(broker_url())}, database {mask_url(settings.resolved_database_url)}")
    starters: list[Callable[[], Service]] = [
        lambda: start_worker(None, concurrency=concurrency, queues="celery"),
        lambda: start_notifier(None),
        lambda: start_beat(None),
    ]
    services = [start() for start in starters]
    stopping = False  # set by Ctrl-C

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            for i, service in enumerate(services):
                if service.proc.poll() is not None and not stopping:
                    # Restart like a process supervisor would (e.g. a worker that exited on a broker reconnect).
                    click.echo(f"hitl dev: {service.name} exited with {service.proc.returncode}; restarting it")
                    services[i] = starters[i]()
            time.sleep(0.2)
    finally:
        for s in services:
            s.stop()
    click.echo("hitl dev: stopped workers and beat (the broker keeps running; `hitl broker stop` stops it)")


@cli.command()
@click.option("--timeout", type=click.FloatRange(min=10), default=120.0, help="Give up after this many seconds.")
@click.option(
    "--examples",
    type=click.Path(exists=True, file_okay=False),
    default="examples",
    help="Folder holding demo.json and the payloads it names.",
)
def demo(timeout: float, examples: str) -> None:
    """Run the sample workflows end to end on the embedded default and check every outcome.

    Starts a broker, a worker and beat, starts the workflows in examples/demo.json, approves and rejects
    through the same completion path as `hitl approve`, lets one time out through beat, prints every run's
    final status and timeline, and stops what it started. Exit 0 when every run ended as expected.
    Its database, broker and logs live in HITL_HOME/demo, emptied at the start and kept afterwards:
    `hitl --home .hitl/demo runs list` shows the runs again.
    """
    from hitl.demo import run_demo

    raise SystemExit(run_demo(examples, timeout))


# ---------------------------------------------------------------- broker and database


@cli.group(cls=HitlGroup, context_settings=CONTEXT)
def broker() -> None:
    """The embedded Redis broker (used when HITL_BROKER_URL is unset)."""


@broker.command("start")
def broker_start() -> None:
    """Start the embedded broker if it is not running."""
    from hitl.broker import ensure_broker
    from hitl.redact import mask_url

    click.echo(mask_url(ensure_broker()))


@broker.command("stop")
def broker_stop() -> None:
    """Stop the embedded broker (queued messages are kept in its append-only file)."""
    from hitl.broker import stop_broker

    click.echo("stopped" if stop_broker() else "not running")


@broker.command("status")
@json_option
def broker_status(as_json: bool) -> None:
    """Say whether the broker in force (embedded, or HITL_BROKER_URL of any Celery transport) is embedded
    and running, whether it accepts a connection (checked through kombu), and its URL. Exit 1 when it
    does not answer."""

    from hitl.broker import broker_url, is_running
    from hitl.events import mode
    from hitl.health import broker_problem
    from hitl.redact import mask_url
    from hitl.render import print_json
    from hitl.settings import get_settings

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


@cli.group(cls=HitlGroup, context_settings=CONTEXT)
def db() -> None:
    """The database hitl keeps its runs, approvals, decisions and outbox in."""


@db.command("upgrade")
@click.option("--revision", default="head", help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Upgrade hitl's tables to the latest migration (Alembic). Safe to run again and concurrently.

    Prints the database's URL (password masked) and the revision it is at.
    """
    from hitl.migrate import current_revision, upgrade
    from hitl.redact import mask_url
    from hitl.settings import get_settings

    def to_revision(engine: Engine) -> str | None:
        upgrade(engine, revision)
        return current_revision(engine)

    at = _on_database(to_revision)
    click.echo(f"{mask_url(get_settings().resolved_database_url)}: at revision {at}")


@db.command("current")
@json_option
def db_current(as_json: bool) -> None:
    """Print the database's migration revision and the latest one (exit 0 either way)."""
    from hitl.migrate import current_revision, head_revision, schema_problem
    from hitl.render import print_json

    current, head = _on_database(current_revision), head_revision()
    if as_json:
        print_json({"current": current, "head": head, "problem": schema_problem(current)})
    else:
        click.echo(f"current {current or '-'}, head {head}" + ("" if current == head else " (run `hitl db upgrade`)"))


T = TypeVar("T")


def _on_database(use: Callable[[Engine], T]) -> T:
    # An engine of its own: the migration commands must work on a schema that get_engine() refuses.
    from sqlalchemy.exc import SQLAlchemyError

    from hitl.db import db_error, make_engine
    from hitl.settings import get_settings

    engine = make_engine(get_settings().resolved_database_url)
    try:
        return use(engine)
    except SQLAlchemyError as exc:
        raise db_error(exc) from exc
    finally:
        engine.dispose()


@cli.command()
@json_option
def sweep(as_json: bool) -> None:
    """Time out due approvals now (beat does this every HITL_SWEEP_INTERVAL seconds)."""
    from hitl.completion import sweep_deadlines
    from hitl.render import print_json

    done = sweep_deadlines()
    print_json({"timed_out": done}) if as_json else click.echo(f"{done} approval(s) timed out")


@cli.command()
@json_option
def relay(as_json: bool) -> None:
    """Send outbox messages left unsent (beat does this every HITL_RELAY_INTERVAL seconds)."""
    from hitl.outbox import relay as relay_now
    from hitl.render import print_json

    sent = relay_now(grace_seconds=0)
    print_json({"sent": sent}) if as_json else click.echo(f"{sent} message(s) sent")


@cli.command()
@click.option("--host", default="127.0.0.1", envvar="HITL_API_HOST", show_envvar=True, help="Interface to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, envvar="HITL_API_PORT", show_envvar=True, help="Port."
)
@click.option(
    "--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), help="Log level."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    envvar="HITL_API_WORKERS",
    show_envvar=True,
    help="Server processes (uvicorn workers) sharing the port; each serves its own live streams.",
)
def serve(host: str, port: int, log_level: str, workers: int) -> None:
    """Serve the HTTP API (/api/v1, OpenAPI at /openapi.json, docs at /docs) and the approval inbox (/inbox).

    Sign in to the inbox with an API key from `hitl keys create`. Signed links (`hitl approvals link`) point
    at HITL_PUBLIC_URL, which should be where people reach this server. Live event streams are async: one
    process holds thousands of them.
    """
    import uvicorn

    from hitl.api import create_app
    from hitl.broker import ensure_broker
    from hitl.db import get_engine

    ensure_broker()
    get_engine()
    if workers == 1:
        uvicorn.run(create_app(), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    else:
        # Worker processes import the app themselves; they inherit the HITL_* environment.
        uvicorn.run(
            "hitl.api:create_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=5,
        )


@cli.group(cls=HitlGroup, context_settings=CONTEXT)
def keys() -> None:
    """Create, list and revoke API keys (stored hashed; a key is shown once)."""


SCOPES = [s.value for s in Scope]


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
    from hitl.auth import DEFAULT_SCOPES, create_key
    from hitl.render import print_json

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
    from hitl.auth import list_keys
    from hitl.render import print_json

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
    from hitl.auth import revoke_key
    from hitl.render import print_json

    revoke_key(key_id)
    print_json({"id": key_id, "revoked": True}) if as_json else click.echo(f"key {key_id} revoked")


@cli.group(cls=HitlGroup, context_settings=CONTEXT)
def groups() -> None:
    """Approver groups: list them, add and remove members (HITL_GROUPS adds groups from settings)."""


@groups.command("list")
@json_option
def groups_list(as_json: bool) -> None:
    """List every group and its members (settings and database)."""
    from hitl.groups import all_groups
    from hitl.render import print_json

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
    from hitl.groups import add_member

    added = [m for m in members if add_member(group, m)]
    click.echo(f"{group}: added {', '.join(added) or 'nobody new'}")


@groups.command("remove")
@click.argument("group")
@click.argument("members", nargs=-1, required=True)
def groups_remove(group: str, members: tuple[str, ...]) -> None:
    """Remove MEMBERS from GROUP (members from HITL_GROUPS stay: change the setting)."""
    from hitl.groups import remove_member

    removed = [m for m in members if remove_member(group, m)]
    click.echo(f"{group}: removed {', '.join(removed) or 'nobody'}")
