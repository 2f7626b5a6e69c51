"""pytest setup for testing your workflows with ``hitl.testing``: each test gets hitl on a throwaway SQLite file
and an in-memory broker, with a real Celery worker in a thread of the test process (nothing to start).

The workflows under test (``refunds.py``, one folder up) are registered by importing their module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the folder holding refunds.py
os.environ["HITL_WORKFLOW_MODULES"] = '["refunds"]'

pytest_plugins = ["hitl.testing"]  # the hitl_harness fixture
