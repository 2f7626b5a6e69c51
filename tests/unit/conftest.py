"""The fast tier: no servers. A SQLite file per test and kombu's in-memory transport stand in for the broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import point_process_at


@pytest.fixture
def engine_env(tmp_path: Path) -> Iterator[Path]:
    point_process_at(
        {
            "HITL_HOME": str(tmp_path),
            "HITL_BROKER_URL": "memory://",
            "HITL_WORKFLOW_MODULES": '["tasks", "tests.flows"]',
        }
    )
    yield tmp_path
    point_process_at({})
