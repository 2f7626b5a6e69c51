"""Alembic owns the schema: the latest migration matches the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from hitl.infra.migrate import current_revision, downgrade, head_revision, schema_drift, upgrade
from tests.conftest import DATABASES

pytestmark = pytest.mark.integration


@pytest.fixture(params=DATABASES)
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for each test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("postgres").create_database())


def test_latest_migration_matches_the_models(engine_url: str) -> None:
    engine = create_engine(engine_url)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert schema_drift(engine) == []
        upgrade(engine)  # idempotent
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_every_table(engine_url: str) -> None:
    engine = create_engine(engine_url)
    try:
        upgrade(engine)
        downgrade(engine, "base")
        assert [t for t in inspect(engine).get_table_names() if t.startswith("hitl_")] == []
        upgrade(engine)
        assert schema_drift(engine) == []
    finally:
        engine.dispose()
