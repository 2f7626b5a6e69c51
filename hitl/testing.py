"""Test helpers for your own workflows: run one in-process up to its wait, decide it, and run it to its end.

A :class:`Harness` points hitl at a fresh SQLite file and kombu's in-memory transport, and runs a real Celery
worker in a thread of the test process (Celery's own ``celery.contrib.testing.worker``, solo pool): your plain
tasks, ``@hitl.step`` steps, groups, chords and waits run through the same code paths as in production, with no
server to start. Deadlines are rows, so a timeout is tested by moving one into the past
(:meth:`Harness.expire`) rather than by waiting. With pytest, load the fixture from your ``conftest.py``::

    pytest_plugins = ["hitl.testing"]


    def test_refund_is_paid_once_approved(hitl_harness):
        run_id = hitl_harness.start("refund", {"order": "A-1", "amount": 30})
        approval = hitl_harness.wait_for_approval(run_id)
        assert approval.subject == {"order": "A-1", "amount": 30}
        hitl_harness.approve(approval.id, actor="alice")
        assert hitl_harness.wait_for_end(run_id).status is hitl.RunStatus.SUCCEEDED

The modules that register your workflows are imported first (``workflow_modules``, or ``HITL_WORKFLOW_MODULES``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import update

from approvals.models import Approval, utcnow
from approvals.schemas import ApprovalView, Decision, RunView
from approvals.status import ApprovalStatus

T = TypeVar("T")

#: Seconds :meth:`Harness.wait_for_approval` and :meth:`Harness.wait_for_end` wait by default.
DEFAULT_TIMEOUT = 30.0


class Harness:
    """hitl on a throwaway SQLite database and an in-memory broker, with a worker in a thread (see the module
    docstring). Use :func:`harness` (a context manager) or the ``hitl_harness`` pytest fixture to make one."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def start(self, workflow: str, payload: Any = None, **options: Any) -> str:
        """Start a run, as :func:`hitl.start` does; return its id."""
        from hitl.core.runs import start

        return start(workflow, payload, **options)

    def wait_for_approval(self, run_id: str, key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> ApprovalView:
        """Wait until run ``run_id`` has a pending approval (of wait ``key``, if given) and return it.

        Raises:
            AssertionError: none within ``timeout`` seconds (the message says the run's status and error).
        """
        from hitl.core.views import list_approvals

        def found() -> ApprovalView | None:
            pending = list_approvals(status=ApprovalStatus.PENDING, run_id=run_id, limit=1000)
            return next((a for a in pending if key is None or a.key == key), None)

        return self._poll(found, run_id, timeout, f"a pending approval{f' {key!r}' if key else ''}")

    def approve(self, approval_id: str, *, actor: str, comment: str | None = None, data: Any = None) -> Decision:
        """Approve, as :func:`hitl.approve` does (the same checks: assignees, decision schema, ...)."""
        from hitl.core.completion import approve

        return approve(approval_id, actor=actor, comment=comment, data=data, channel="test")

    def reject(self, approval_id: str, *, actor: str, reason: str | None = None, data: Any = None) -> Decision:
        """Reject, as :func:`hitl.reject` does."""
        from hitl.core.completion import reject

        return reject(approval_id, actor=actor, reason=reason, data=data, channel="test")

    def expire(self, approval_id: str) -> int:
        """Move the deadline of a pending approval into the past and run the deadline sweep (as beat would);
        return how many approvals the sweep timed out."""
        from hitl.core.deadlines import sweep
        from hitl.infra.db import session_scope

        with session_scope() as s:
            s.execute(update(Approval).where(Approval.id == approval_id).values(deadline=utcnow()))
        return sweep()

    def wait_for_end(self, run_id: str, timeout: float = DEFAULT_TIMEOUT) -> RunView:
        """Wait until run ``run_id`` has ended (succeeded, failed, rejected, timed out, cancelled); return it.

        Raises:
            AssertionError: it has not ended within ``timeout`` seconds.
        """
        from hitl.core.views import get_run

        return self._poll(lambda: run if (run := get_run(run_id)).status.terminal else None, run_id, timeout, "its end")

    def run(self, run_id: str) -> RunView:
        """Return run ``run_id`` now, with its approvals and timeline."""
        from hitl.core.views import get_run

        return get_run(run_id)

    def _poll(self, probe: Callable[[], T | None], run_id: str, timeout: float, what: str) -> T:
        from hitl.core.views import get_run

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value is not None:
                return value
            time.sleep(0.02)
        run = get_run(run_id)
        raise AssertionError(
            f"run {run_id} ({run.workflow}): waited {timeout:g}s for {what}; the run is {run.status.value}"
            + (f" with error {run.error!r}" if run.error else "")
        )


@contextmanager
def harness(home: Path, workflow_modules: list[str] | None = None, **settings: str) -> Iterator[Harness]:
    """Point this process at a fresh hitl in ``home`` and run a worker in a thread until the block ends.

    Args:
        home: an empty folder (the SQLite file and beat's state go there).
        workflow_modules: modules that register the workflows under test (default: ``HITL_WORKFLOW_MODULES``).
        **settings: other ``HITL_*`` settings, by field name (``max_payload_bytes="1000"``).

    The environment's ``HITL_*`` variables are restored afterwards.
    """
    from celery.contrib.testing.worker import start_worker

    from hitl import app
    from hitl.infra import db
    from hitl.infra.celery_app import reconfigure
    from hitl.infra.settings import get_settings

    home.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in os.environ.items() if k.startswith("HITL_")}
    env = {
        "HITL_HOME": str(home),
        "HITL_DATABASE_URL": f"sqlite:///{home / 'hitl.db'}",
        "HITL_BROKER_URL": "memory://",
        "HITL_AUTO_MIGRATE": "true",
        **{f"HITL_{k.upper()}": v for k, v in settings.items()},
    }
    if workflow_modules is not None:
        env["HITL_WORKFLOW_MODULES"] = json.dumps(workflow_modules)
    elif "HITL_WORKFLOW_MODULES" in saved:
        env["HITL_WORKFLOW_MODULES"] = saved["HITL_WORKFLOW_MODULES"]
    with ExitStack() as stack:
        for var in saved:
            os.environ.pop(var)
        stack.callback(_restore, saved)
        os.environ.update(env)
        get_settings.cache_clear()
        db.reset_engine()
        reconfigure()
        from hitl.core.registry import load_workflows

        load_workflows()
        app.loader.import_default_modules()
        db.get_engine()
        app.control.purge()  # the in-memory queues are the process's: drop what an earlier test left in them
        stack.enter_context(start_worker(app, perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30))
        yield Harness(home)


def _restore(saved: dict[str, str]) -> None:
    from hitl.infra import db
    from hitl.infra.celery_app import reconfigure
    from hitl.infra.settings import get_settings

    for var in [v for v in os.environ if v.startswith("HITL_")]:
        del os.environ[var]
    os.environ.update(saved)
    get_settings.cache_clear()
    db.reset_engine()
    reconfigure()


try:  # the pytest fixture, when pytest is there (``pytest_plugins = ["hitl.testing"]``)
    import pytest
except ImportError:  # pragma: no cover - hitl.testing without pytest: harness() alone
    pass
else:

    @pytest.fixture
    def hitl_harness(tmp_path: Path) -> Iterator[Harness]:
        """A :class:`Harness` on a fresh database in ``tmp_path``, its worker stopped after the test."""
        with harness(tmp_path / "hitl") as h:
            yield h


__all__ = ["DEFAULT_TIMEOUT", "Harness", "harness"]
