"""SQLite's query plans for statements that pick rows by id: they must search by id, not walk a status index.

Without statistics (hitl does not run ``ANALYZE``) SQLite's planner takes an equality on the first column of
any index as selective, whatever the table holds; so the plan chosen here, on a handful of rows, is the plan
chosen on a million. A status index walk there costs a scan of every row in that status (measured on 1,000,000
pending approvals: 3 s of a 10,000-approval sweep; 1.1 s to cancel one run).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import event

import hitl
from approvals.status import ApprovalStatus
from hitl.completion import sweep_deadlines
from hitl.db import get_engine
from hitl.views import list_approvals
from tests.unit.test_completion import waiting_run

_PICKS_BY_ID = re.compile(r"\b(hitl_approvals|hitl_runs)\.(id IN \(|run_id = \?)")


def explained(statements: list[tuple[str, Any]]) -> dict[str, list[str]]:
    """``EXPLAIN QUERY PLAN`` of each statement that picks rows of approvals or runs by id, with its parameters."""
    plans: dict[str, list[str]] = {}
    with get_engine().connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        for sql, params in statements:
            if _PICKS_BY_ID.search(sql):
                plans[sql] = [row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
    return plans


def test_sweep_cancel_and_a_runs_approvals_search_by_id_not_by_status(engine_env: Path) -> None:
    for _ in range(3):
        waiting_run(deadline_in=-1)
    cancelled = hitl.get_approval(waiting_run(deadline_in=600)).run_id
    assert cancelled is not None
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, sql: str, params: Any, context: Any, executemany: bool) -> None:
        if not executemany:
            statements.append((sql, params))

    event.listen(get_engine(), "before_cursor_execute", record)
    try:
        assert sweep_deadlines() == 3
        assert len(hitl.cancel(cancelled, actor="op")) == 1
        assert len(list_approvals(status=ApprovalStatus.CANCELLED, run_id=cancelled)) == 1
    finally:
        event.remove(get_engine(), "before_cursor_execute", record)

    plans = explained(statements)
    # the sweep's approval and run compare-and-sets; the cancel's, and the listing's, search of one run's approvals
    assert any(s.startswith("UPDATE hitl_approvals") for s in plans), plans
    assert any(s.startswith("UPDATE hitl_runs") and " IN (" in s for s in plans), plans
    assert sum(s.startswith("SELECT") and "run_id = ?" in s for s in plans) == 2, plans
    for sql, plan in plans.items():
        assert not any("_status" in step for step in plan), f"{sql}\n  walks a status index: {plan}"
        assert any("USING INDEX" in step or "USING PRIMARY KEY" in step for step in plan), f"{sql}: {plan}"
