"""The list commands' fast path: Core listings in the views' JSON shape, rich-identical plain tables, the light
settings reader, and what ``hitl approvals list`` imports."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text

import hitl
from approvals.schemas import ApprovalView, RunView
from hitl.cli.plain import APPROVAL_COLUMNS, approval_cells, layout
from hitl.core import listings
from hitl.infra import env
from hitl.infra.settings import Settings
from tests.unit.test_completion import waiting_run


def test_listings_are_the_views_json_shape(engine_env: Path) -> None:
    decided = waiting_run()
    hitl.approve(decided, actor="alice", comment="fine", data={"n": 1})
    waiting_run(policy={"quorum": 2})
    approvals = listings.list_approvals(status=None)
    assert len(approvals) == 2 and approvals[0]["decision"]["actor"] == "alice"
    assert approvals == [ApprovalView.model_validate(a).model_dump(mode="json") for a in approvals]
    assert approvals == [v.model_dump(mode="json") for v in hitl.list_approvals(status=None)]
    runs = listings.list_runs()
    assert len(runs) == 2
    assert runs == [v.model_dump(mode="json") for v in hitl.list_runs()]
    assert runs == [RunView.model_validate(r).model_dump(mode="json") for r in runs]


def _rich(headers: tuple[str, ...], rows: list[list[str]], width: int) -> str:
    table = Table(box=None, pad_edge=False)
    for h in headers:
        table.add_column(h)
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    out = io.StringIO()
    Console(file=out, width=width, highlight=False, color_system=None).print(table)
    return out.getvalue()


def test_plain_tables_are_byte_for_byte_riches(engine_env: Path) -> None:
    for i in range(3):
        waiting_run(requester="r" * (i + 1))
    rows = [approval_cells(a) for a in listings.list_approvals()]
    assert layout(APPROVAL_COLUMNS, rows, 160) == _rich(APPROVAL_COLUMNS, rows, 160)
    assert layout(("A", "LONG HEADER"), [["x", "1"], ["yyyy", "22"]], 40) == _rich(
        ("A", "LONG HEADER"), [["x", "1"], ["yyyy", "22"]], 40
    )
    assert layout(APPROVAL_COLUMNS, rows, 40) is None  # too wide: rich wraps it
    assert layout(("K",), [["潮"]], 80) is None  # wide characters: rich measures them


def test_the_light_reader_agrees_with_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(env.SETTING_NAMES) == set(Settings.model_fields)
    for key in list(os.environ):
        if key.upper().startswith("HITL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("hitl_home", str(tmp_path / "h"))  # any case, as pydantic-settings reads it
    for value in ("no", "TRUE", "0", "on"):
        monkeypatch.setenv("HITL_AUTO_MIGRATE", value)
        assert env.auto_migrate() is Settings().auto_migrate
    assert env.database_url() == Settings().resolved_database_url
    monkeypatch.setenv("HITL_DATABASE_URL", "postgresql://u@h/db")
    assert env.database_url() == Settings().resolved_database_url == "postgresql://u@h/db"


def test_approvals_list_imports_neither_pydantic_nor_the_orm_nor_rich(tmp_path: Path) -> None:
    # On a database at the latest migration (a first use migrates it, and Alembic imports the ORM).
    code = (
        "import sys; from hitl.cli.main import cli\n"
        "try:\n    cli(['approvals', 'list'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('pydantic', 'pydantic_settings', 'sqlalchemy.orm', 'rich', 'redis', 'celery')"
        " if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")} | {"HITL_HOME": str(tmp_path)}
    upgrade = [sys.executable, "-m", "hitl.cli.main", "db", "upgrade"]
    subprocess.run(upgrade, env=environ, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True).stdout
    assert "no pending approvals" in out
    assert "HEAVY []" in out
