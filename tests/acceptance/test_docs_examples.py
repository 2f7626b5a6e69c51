"""The docs' examples run as the docs say: the testing guide's pytest file passes, as a user runs it.

``docs/howto/testing.md`` includes ``docs/examples/testing/`` (and the tutorial ``docs/examples/refunds.py``); this
runs that test folder with pytest in a fresh process, from the repository, with ``hitl.testing``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.acceptance


def test_the_testing_guides_example_passes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HITL_", "PYTEST_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "docs/examples/testing"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"^4 passed", proc.stdout, re.M), proc.stdout[-2000:]
