"""``hitl db``: schema migrations (upgrade, current)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from sqlalchemy import Engine

from hitl.cli.common import CONTEXT, HitlGroup, json_option


@click.group(cls=HitlGroup, context_settings=CONTEXT)
def db() -> None:
    """The database hitl keeps its runs, approvals, decisions and outbox in."""


@db.command("upgrade")
@click.option("--revision", default="head", help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Upgrade hitl's tables to the latest migration (Alembic). Safe to run again and concurrently.

    Prints the database's URL (password masked) and the revision it is at.
    """
    from hitl.infra.migrate import current_revision, upgrade
    from hitl.infra.redact import mask_url
    from hitl.infra.settings import get_settings

    def to_revision(engine: Engine) -> str | None:
        upgrade(engine, revision)
        return current_revision(engine)

    at = _on_database(to_revision)
    click.echo(f"{mask_url(get_settings().resolved_database_url)}: at revision {at}")


@db.command("current")
@json_option
def db_current(as_json: bool) -> None:
    """Print the database's migration revision and the latest one (exit 0 either way)."""
    from hitl.cli.render import print_json
    from hitl.infra.migrate import current_revision, head_revision, schema_problem

    current, head = _on_database(current_revision), head_revision()
    if as_json:
        print_json({"current": current, "head": head, "problem": schema_problem(current)})
    else:
        click.echo(f"current {current or '-'}, head {head}" + ("" if current == head else " (run `hitl db upgrade`)"))


T = TypeVar("T")


def _on_database(use: Callable[[Engine], T]) -> T:
    # An engine of its own: the migration commands must work on a schema that get_engine() refuses.
    from sqlalchemy.exc import SQLAlchemyError

    from hitl.infra.db import db_error, make_engine
    from hitl.infra.settings import get_settings

    engine = make_engine(get_settings().resolved_database_url)
    try:
        return use(engine)
    except SQLAlchemyError as exc:
        raise db_error(exc) from exc
    finally:
        engine.dispose()
