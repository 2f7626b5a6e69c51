from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.pg import PgServer, start_postgres
from tests.support import FIGURES, ApiServer, Stack, api_server, running_stack

DATABASES = ["sqlite", "postgresql"]
_figures: list[dict[str, object]] = []


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A real PostgreSQL server for the whole session (required in CI, skipped on a laptop without one)."""
    try:
        server = start_postgres()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="module", params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database: a SQLite file in the stack's home (''), or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    server: PgServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Stack]:
    """A real embedded Redis server, a 2-process prefork worker and beat, on SQLite and on PostgreSQL."""
    with running_stack(tmp_path_factory.mktemp("hitl"), HITL_DATABASE_URL=database_url) as s:
        yield s


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the figures the fault-injection tests record (they travel in the report, also from xdist workers)."""
    if report.when == "call":
        _figures.extend(value for name, value in report.user_properties if name == FIGURES)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures of the fault-injection runs (runs, kills, lost, duplicated)."""
    if _figures:
        terminalreporter.section("fault-injection figures")
        for row in _figures:
            terminalreporter.write_line(", ".join(f"{k}={v}" for k, v in row.items()))


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[ApiServer]:
    """``hitl serve`` on a free port, over the module's stack (real worker and beat, SQLite or PostgreSQL)."""
    with api_server(stack) as server:
        yield server
