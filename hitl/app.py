"""The Celery application of hitl, with every task of hitl registered: ``celery -A hitl.app worker|beat|flower``.

The application object and its configuration are :mod:`hitl.infra.celery_app`; importing this module also
imports :mod:`hitl.worker` (journaled steps, the wait task, plain tasks' signal handlers, beat jobs).
"""

from __future__ import annotations

from hitl import worker as _worker  # noqa: F401 - registers hitl's tasks and signal handlers
from hitl.infra.celery_app import app, reconfigure

__all__ = ["app", "reconfigure"]
