from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Stack, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real embedded Redis server, a 2-process prefork worker and beat, on a fresh SQLite file."""
    with running_stack(tmp_path_factory.mktemp("hitl")) as s:
        yield s
