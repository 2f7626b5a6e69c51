"""SQLite's query plans for statements that pick rows by id: they must search by id, not walk a status index.

Without statistics (hitl does not run ``ANALYZE``) SQLite's planner takes an equality on the first column of
any index as selective, whatever the table holds; so the plan chosen here, on a handful of rows, is the plan
chosen on a million. A status index walk there costs a scan of every row in that status (measured on 1,000,000
pending approvals: 3 s of a 10,000-approval sweep; 1.1 s to cancel one run).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event

import hitl
from approvals.status import ApprovalStatus, RunStatus
from hitl.core.deadlines import sweep as sweep_deadlines
from hitl.core.views import approval_cursor, list_approvals, list_runs
from hitl.infra.db import get_engine
from tests.unit.test_completion import waiting_run

_PICKS_BY_ID = re.compile(r"\b(hitl_approvals|hitl_runs)\.(id IN \(|run_id = \?)")


def explained(statements: list[tuple[str, Any]], pattern: re.Pattern[str] = _PICKS_BY_ID) -> dict[str, list[str]]:
    """``EXPLAIN QUERY PLAN`` of each statement matching ``pattern``, with the parameters it was run with."""
    plans: dict[str, list[str]] = {}
    with get_engine().connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        for sql, params in statements:
            if pattern.search(sql):
                plans[sql] = [row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
    return plans


@contextlib.contextmanager
def recorded() -> Iterator[list[tuple[str, Any]]]:
    """The statements (and parameters) this process runs meanwhile, ``executemany`` aside."""
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, sql: str, params: Any, context: Any, executemany: bool) -> None:
        if not executemany:
            statements.append((sql, params))

    event.listen(get_engine(), "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(get_engine(), "before_cursor_execute", record)


def test_sweep_cancel_and_a_runs_approvals_search_by_id_not_by_status(engine_env: Path) -> None:
    for _ in range(3):
        waiting_run(deadline_in=-1)
    cancelled = hitl.get_approval(waiting_run(deadline_in=600)).run_id
    assert cancelled is not None
    with recorded() as statements:
        assert sweep_deadlines() == 3
        assert len(hitl.cancel(cancelled, actor="op")) == 1
        assert len(list_approvals(status=ApprovalStatus.CANCELLED, run_id=cancelled)) == 1

    plans = explained(statements)
    # the sweep's approval and run compare-and-sets; the cancel's, and the listing's, search of one run's approvals
    assert any(s.startswith("UPDATE hitl_approvals") for s in plans), plans
    assert any(s.startswith("UPDATE hitl_runs") and " IN (" in s for s in plans), plans
    assert sum(s.startswith("SELECT") and "run_id = ?" in s for s in plans) == 2, plans
    for sql, plan in plans.items():
        assert not any("_status" in step for step in plan), f"{sql}\n  walks a status index: {plan}"
        assert any(
            by in step for step in plan for by in ("USING INDEX", "USING COVERING INDEX", "USING PRIMARY KEY")
        ), f"{sql}: {plan}"


def test_the_inbox_and_the_runs_listing_read_an_index_in_order_without_sorting(engine_env: Path) -> None:
    for _ in range(3):
        waiting_run()
    with recorded() as statements:
        first = list_approvals(limit=2)  # pending, oldest first
        assert len(first) == 2 and len(list_approvals(limit=2, after=approval_cursor(first[-1]))) == 1
        assert len(list_runs(limit=2)) == 2  # newest first
        assert len(list_runs(status=RunStatus.WAITING, limit=2)) == 2
    plans = explained(statements, re.compile(r"ORDER BY (hitl_approvals|hitl_runs)\.created_at"))
    assert len(plans) == 4, plans
    for sql, plan in plans.items():
        assert not any("TEMP B-TREE" in step for step in plan), f"{sql}\n  sorts: {plan}"
        assert any("_created" in step for step in plan), f"{sql}: {plan}"
