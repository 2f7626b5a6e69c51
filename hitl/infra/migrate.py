"""Schema migrations with Alembic: ``hitl db upgrade``, and the check that the models match the migrations.

By default (``HITL_AUTO_MIGRATE=true``) each process upgrades the schema to the latest revision when it
first connects, so the embedded default needs no set-up step; concurrent upgrades are serialised (a
PostgreSQL advisory lock; SQLite's ``BEGIN IMMEDIATE``). Production deployments may set it to false and run
``hitl db upgrade`` once per release.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from approvals.errors import SchemaOutdated
from approvals.models import Base

#: Key of the PostgreSQL advisory lock held while migrating.
_PG_MIGRATION_LOCK = 0x686974_6C  # "hitl"


def alembic_config(connection: Connection | None = None) -> Config:
    """Return an Alembic config for hitl's migrations, bound to ``connection`` if given."""
    cfg = Config()
    cfg.set_main_option("script_location", "hitl.infra:migrations")
    cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    """Return the id of the latest migration (read once per process: the scripts ship with the code)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> frozenset[str]:
    """Return the ids of every migration this hitl ships."""
    return frozenset(s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def schema_problem(current: str | None) -> str | None:
    """Return what is wrong with a database at revision ``current`` for this hitl, as one line that says what
    to do, or None when it is at the latest migration.

    The revision comes from Alembic's ``alembic_version`` table (:func:`current_revision`); the latest from
    the migration scripts (:func:`head_revision`).
    """
    head = head_revision()
    if current == head:
        return None
    if current is None:
        return f"database has no hitl tables, this hitl needs revision {head}: run `hitl db upgrade`"
    if current not in known_revisions():
        return f"database at revision {current}, newer than this hitl knows (latest {head}): upgrade hitl"
    return f"database at revision {current}, this hitl needs {head}: run `hitl db upgrade`"


def check_schema(engine: Engine) -> None:
    """Check that the database behind ``engine`` is at the latest migration.

    Raises:
        SchemaOutdated: it is behind (or ahead of) this hitl; the message says which revisions and what to run.
        sqlalchemy.exc.SQLAlchemyError: the database failed (the caller maps it).
    """
    problem = schema_problem(current_revision(engine))
    if problem is not None:
        raise SchemaOutdated(problem)


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at, or None before the first migration."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision`` (idempotent, safe to run concurrently)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database behind ``engine`` to ``revision`` (``"base"`` drops hitl's tables)."""
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def schema_drift(engine: Engine) -> list[Any]:
    """Return the differences between the models and the database (empty when the migrations match)."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))
