"""Listings of approvals and runs: one Core query each, returning rows as JSON-ready dicts.

These are the only queries behind ``hitl approvals list``, ``hitl runs list``, ``GET /api/v1/approvals`` and
``GET /api/v1/runs``. They use SQLAlchemy Core on :mod:`approvals.tables` and return plain dicts in the JSON shape
of :class:`approvals.schemas.ApprovalView` and :class:`approvals.schemas.RunView` (``model_dump(mode="json")``:
times as ISO 8601 with ``Z``, statuses as their values), so that the CLI prints them without importing the ORM
or pydantic, and :mod:`hitl.core.views` validates them into those models for the HTTP API
(``tests/unit/test_listings.py`` checks that both shapes agree).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, cast, or_, select

from approvals import tables
from approvals.errors import InvalidPayload
from approvals.status import ApprovalStatus, RunStatus
from approvals.tables import not_indexed, utcnow
from hitl.infra.db import read_scope

#: The largest age filter accepted (100 years, in seconds); beyond it dates overflow.
MAX_AGE_SECONDS = 100 * 365 * 86400

_A, _R, _D, _V = tables.approvals, tables.runs, tables.decisions, tables.votes


def iso(t: datetime | None) -> str | None:
    """``t`` (aware UTC) as pydantic writes a datetime in JSON: ISO 8601, ``Z`` for UTC."""
    if t is None:
        return None
    text = t.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def list_approvals(
    status: ApprovalStatus | None = ApprovalStatus.PENDING,
    workflow: str | None = None,
    run_id: str | None = None,
    older_than: float | None = None,
    limit: int = 100,
    *,
    assignee: str | None = None,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """Return approvals as dicts in ``ApprovalView``'s JSON shape, oldest first, filtered by status (None: any),
    workflow, run, age and assignee. Two statements: the approvals with their run's workflow and their
    decision, then their votes.

    Args:
        older_than: only approvals created at least this many seconds ago (0 to 100 years).
        limit: at most this many.
        assignee: only approvals whose assignees include this user or group name.
        after: a cursor (:func:`approval_cursor` of the last item of the previous page): the page after it.

    Raises:
        InvalidPayload: ``older_than`` is out of range, or ``after`` is not a cursor this module made.
        InfrastructureError: the database failed.
    """
    stmt = (
        select(_A, _R.c.workflow, _D.c.outcome, _D.c.data, _D.c.actor, _D.c.comment, _D.c.channel, _D.c.decided_at)
        .select_from(_A.outerjoin(_R, _R.c.id == _A.c.run_id).outerjoin(_D, _D.c.approval_id == _A.c.id))
        .order_by(_A.c.created_at, _A.c.id)
        .limit(limit)
    )
    if status is not None:  # (picked by run id if one is given, not by walking the status index: not_indexed)
        stmt = stmt.where((not_indexed(_A.c.status) if run_id else _A.c.status) == status)
    if workflow:
        stmt = stmt.where(_R.c.workflow == workflow)
    if run_id:
        stmt = stmt.where(_A.c.run_id == run_id)
    if older_than is not None:
        if not 0 <= older_than <= MAX_AGE_SECONDS:
            raise InvalidPayload(f"older_than must be between 0 and {MAX_AGE_SECONDS} seconds")
        stmt = stmt.where(_A.c.created_at <= utcnow() - timedelta(seconds=older_than))
    if assignee:
        # Assignees are a JSON list; match the quoted name in its text form (portable across databases).
        stmt = stmt.where(cast(_A.c.assignees, String).contains(json.dumps(assignee), autoescape=True))
    if after:
        created, last_id = parse_cursor(after)
        stmt = stmt.where(or_(_A.c.created_at > created, and_(_A.c.created_at == created, _A.c.id > last_id)))
    with read_scope() as conn:
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
        votes: dict[str, list[dict[str, Any]]] = {}
        if rows:
            ids = [r["id"] for r in rows]
            vote_rows = conn.execute(select(_V).where(_V.c.approval_id.in_(ids)).order_by(_V.c.id)).mappings()
            for v in vote_rows:
                votes.setdefault(v["approval_id"], []).append(_vote(v))
    return [_approval(r, votes.get(r["id"], [])) for r in rows]


def _vote(v: Any) -> dict[str, Any]:
    return {
        "stage": v["stage"],
        "actor": v["actor"],
        "outcome": v["outcome"],
        "comment": v["comment"],
        "data": v["data"] or {},
        "channel": v["channel"],
        "at": iso(v["at"]),
    }


def _approval(r: dict[str, Any], votes: list[dict[str, Any]]) -> dict[str, Any]:
    decision = (
        None
        if r["outcome"] is None
        else {
            "outcome": r["outcome"],
            "data": r["data"] or {},
            "actor": r["actor"],
            "comment": r["comment"],
            "channel": r["channel"],
            "decided_at": iso(r["decided_at"]),
        }
    )
    return {
        "id": r["id"],
        "run_id": r["run_id"],
        "workflow": r["workflow"],
        "key": r["key"],
        "status": ApprovalStatus(r["status"]).value,
        "subject": r["subject"],
        "assignees": [str(x) for x in r["assignees"] or []],
        "deadline": iso(r["deadline"]),
        "created_at": iso(r["created_at"]),
        "resolved_at": iso(r["resolved_at"]),
        "decision": decision,
        "decision_schema": r["decision_schema"],
        "policy": r["policy"] or {},
        "requester": r["requester"],
        "stage": r["stage"],
        "votes": votes,
        "idempotency_key": r["idempotency_key"],
    }


def list_runs(status: RunStatus | None = None, workflow: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Return runs as dicts in ``RunView``'s JSON shape (without approvals or timeline: empty lists), newest
    first, filtered by status and workflow. One statement.

    Raises:
        InfrastructureError: the database failed.
    """
    stmt = select(_R).order_by(_R.c.created_at.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(_R.c.status == status)
    if workflow:
        stmt = stmt.where(_R.c.workflow == workflow)
    with read_scope() as conn:
        return [
            {
                "id": r["id"],
                "workflow": r["workflow"],
                "status": RunStatus(r["status"]).value,
                "idempotency_key": r["idempotency_key"],
                "payload": r["payload"],
                "result": r["result"],
                "error": r["error"],
                "created_at": iso(r["created_at"]),
                "updated_at": iso(r["updated_at"]),
                "finished_at": iso(r["finished_at"]),
                "approvals": [],
                "timeline": [],
            }
            for r in conn.execute(stmt).mappings()
        ]


def approval_cursor(created_at: datetime, approval_id: str) -> str:
    """Return the opaque cursor of the approval created at ``created_at`` with ``approval_id``, for
    :func:`list_approvals`'s ``after`` (keyset pagination)."""
    return base64.urlsafe_b64encode(json.dumps([created_at.isoformat(), approval_id]).encode()).decode()


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    """Return the (created_at, id) that :func:`approval_cursor` put in ``cursor``.

    Raises:
        InvalidPayload: ``cursor`` is not a cursor :func:`approval_cursor` made.
    """
    try:
        created, last_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), str(last_id)
    except (ValueError, TypeError) as exc:
        raise InvalidPayload(f"not a page cursor: {cursor[:40]!r}") from exc
