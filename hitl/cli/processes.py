"""Commands that run hitl's processes: ``worker``, ``beat``, ``flower``, ``dev`` and ``serve``."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import click

from hitl.cli.common import CONTEXT, Seconds


def _exec_celery(*args: str) -> None:
    from hitl.infra.broker import ensure_broker
    from hitl.infra.procs import celery_argv

    ensure_broker()
    argv = celery_argv(*args)
    os.execv(argv[0], argv)


@click.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
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


@click.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--loglevel", "-l", default="INFO", help="Celery log level.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run Celery beat: deadline sweep, outbox relay and cron jobs (extra arguments go to `celery beat`)."""
    _exec_celery("beat", "--loglevel", loglevel, *celery_args)


@click.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Run Flower to watch workers and steps live (extra arguments go to `celery flower`, e.g. --port=5555)."""
    _exec_celery("flower", *flower_args)


@click.command()
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, help="Worker processes.")
def dev(concurrency: int) -> None:
    """Run the embedded broker, a worker, a notifier worker and beat in this terminal until Ctrl-C.

    The notifier worker consumes the notify queue (HITL_NOTIFY_QUEUE) alone, so a slow webhook or mail
    server never holds a process that runs steps or sweeps deadlines.
    Use a second terminal for `hitl start`, `hitl approvals list`, `hitl approve`.
    """
    from hitl.infra.broker import broker_url, ensure_broker
    from hitl.infra.db import get_engine
    from hitl.infra.procs import Service, start_beat, start_notifier, start_worker
    from hitl.infra.redact import mask_url
    from hitl.infra.settings import get_settings

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


@click.command()
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
    from hitl.infra.broker import ensure_broker
    from hitl.infra.db import get_engine

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


@click.command()
@click.option(
    "--timeout",
    type=Seconds(10, 86400),
    default=120.0,
    show_default=True,
    help="Give up after this many seconds (10 to 86400).",
)
@click.option(
    "--examples",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder holding demo.json and the payloads it names (default: the plan that ships with hitl).",
)
def demo(timeout: float, examples: str | None) -> None:
    """Run the sample workflows end to end on the embedded default and check every outcome.

    Starts a broker, a worker and beat, starts the sample workflows (hitl.examples) as its demo.json plans, approves
    and rejects
    through the same completion path as `hitl approve`, lets one time out through beat, prints every run's
    final status and timeline, and stops what it started. Exit 0 when every run ended as expected.
    Its database, broker and logs live in HITL_HOME/demo, emptied at the start and kept afterwards:
    `hitl --home .hitl/demo runs list` shows the runs again.
    """
    from hitl.cli.demo import run_demo

    raise SystemExit(run_demo(examples, timeout))
