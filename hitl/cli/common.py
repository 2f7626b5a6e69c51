"""What every command module shares: the error-handling group class, ``--json``, finite seconds."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from approvals.errors import HitlError

F = TypeVar("F", bound=Callable[..., Any])


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True}


class OneLineFormatter(logging.Formatter):
    """Log records as the CLI's own messages: ``warning: ...`` on one line, the exception as its type and first
    line rather than a traceback, URL passwords masked (``HITL_DEBUG=1`` adds the traceback, masked too)."""

    def format(self, record: logging.LogRecord) -> str:
        from hitl.infra import settings
        from hitl.infra.redact import mask_urls, one_line, scrub

        # The settings' own passwords once they are read; reading them here would log (misspelt settings) while
        # this record is being written, ahead of it.
        mask = scrub if settings.get_settings.cache_info().currsize else mask_urls
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" ({type(exc).__name__}: {one_line(str(exc))})"
        line = f"{record.levelname.lower()}: {mask(one_line(text))}"
        if record.exc_info and os.environ.get("HITL_DEBUG"):
            line += "\n" + mask(self.formatException(record.exc_info))
        return line


def log_to_stderr() -> None:
    """Show this process's warnings and errors on stderr, one line each (see :class:`OneLineFormatter`).

    Without it Python's last-resort handler prints a logged exception's whole traceback. Left alone when
    logging is configured already (``hitl serve``'s server, an embedding program).
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLineFormatter())
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)


class HitlGroup(click.Group):
    """A click group that turns hitl's errors into a one-line message and its exit code, and its log records
    into one-line warnings (:func:`log_to_stderr`)."""

    def invoke(self, ctx: click.Context) -> Any:
        log_to_stderr()
        try:
            return super().invoke(ctx)
        except HitlError as exc:
            from hitl.infra.redact import scrub

            click.echo(f"error: {scrub(exc.message)}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("HITL_DEBUG"):
                raise
            from hitl.infra.redact import one_line, scrub

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
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


def json_option(fn: F) -> F:
    """Add ``--json`` (machine-readable output on stdout) to a command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)
