"""The sample workflows (hitl.examples) as this deployment runs them (tasks/), end to end through the CLI, and
the deployment's digest cron job (celeryconfig.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

import hitl
from approvals.status import RunStatus
from hitl.examples.dbchange import SEED, ensure_catalogue
from hitl.examples.store import Article, Product, create_app_tables
from hitl.infra.db import session_scope
from tasks.digest import Digest
from tests.support import ROOT, Stack, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Stack]:
    """The usual stack, with the digest cron job due every minute and listing every pending approval."""
    with running_stack(
        tmp_path_factory.mktemp("flows"),
        HITL_DATABASE_URL=database_url,
        HITL_CELERY_CONFIG="celeryconfig",
        DIGEST_CRON="* * * * *",
        DIGEST_AGE="0",
    ) as s:
        yield s


def start(stack: Stack, workflow: str, payload: Any) -> str:
    res = stack.cli(
        "start", workflow, "--payload", payload if isinstance(payload, str) else json.dumps(payload), "--json"
    )
    assert res.code == 0, res.err
    return str(res.json()["run_id"])


def next_approval(run_id: str, count: int) -> hitl.ApprovalView:
    """Wait for the run's ``count``-th approval to be pending and return it."""

    def ready() -> hitl.ApprovalView | None:
        found = hitl.list_approvals(status=None, run_id=run_id)
        return found[-1] if len(found) == count and found[-1].status == "pending" else None

    return wait_for(ready, what=f"approval #{count} of run {run_id}")


def final(run_id: str) -> hitl.RunView:
    return wait_for(lambda: (r := hitl.get_run(run_id)).status.terminal and r, 30, f"run {run_id} to finish")


def catalogue() -> dict[str, tuple[str, Decimal, int, str | None]]:
    with session_scope() as s:
        return {p.sku: (p.name, p.price, p.stock, p.changed_by_run) for p in s.scalars(select(Product))}


# ------------------------------------------------------------------ content review


def test_content_review_revises_on_rejection_then_publishes(stack: Stack) -> None:
    run_id = start(stack, "content-review", {"topic": "Tide pools", "max_revisions": 2})
    first = next_approval(run_id, 1)
    assert first.subject["revision"] == 0 and "Tide pools" in first.subject["body"]
    assert stack.cli("reject", first.id, "--by", "bob", "--reason", "needs sources").code == 0

    second = next_approval(run_id, 2)
    assert second.subject["revision"] == 1
    assert "needs sources" in second.subject["body"]  # the revision took the reviewer's comment
    assert stack.cli("approve", second.id, "--by", "alice", "--comment", "good").code == 0

    run = final(run_id)
    assert run.status is RunStatus.SUCCEEDED
    with session_scope() as s:
        [article] = s.scalars(select(Article).where(Article.run_id == run_id)).all()
    assert (article.revisions, article.approved_by, article.body) == (1, "alice", second.subject["body"])
    assert run.result["article_id"] == article.id


def test_content_review_stops_as_rejected_after_max_revisions(stack: Stack) -> None:
    run_id = start(stack, "content-review", {"topic": "Perpetual motion", "max_revisions": 1})
    for n, who in ((1, "bob"), (2, "carol")):
        approval = next_approval(run_id, n)
        assert stack.cli("reject", approval.id, "--by", who, "--reason", "no").code == 0
    run = final(run_id)
    assert run.status is RunStatus.REJECTED
    assert len(hitl.list_approvals(status=None, run_id=run_id)) == 2
    create_app_tables()  # no article was ever published if this test runs first in its process
    with session_scope() as s:
        assert s.scalars(select(Article).where(Article.run_id == run_id)).all() == []


def test_content_review_from_the_committed_example(stack: Stack) -> None:
    run_id = start(stack, "content-review", f"@{ROOT / 'hitl' / 'examples' / 'content-review.json'}")
    approval = next_approval(run_id, 1)
    assert approval.assignees == ["editors"]
    assert stack.cli("approve", approval.id, "--by", "alice").code == 0
    assert final(run_id).status is RunStatus.SUCCEEDED


# ------------------------------------------------------------------ database change gate


def test_db_change_shows_a_diff_and_applies_on_approval(stack: Stack) -> None:
    ensure_catalogue()
    before = catalogue()
    run_id = start(stack, "db-change", f"@{ROOT / 'hitl' / 'examples' / 'db-change-prices.json'}")
    approval = next_approval(run_id, 1)
    rows = {r["sku"]: r for r in approval.subject["rows"]}
    assert rows["TEA-001"]["before"]["price"] == "6.50" and rows["TEA-001"]["after"]["price"] == "6.85"
    assert rows["TEA-001"]["changed"] == ["price"]
    assert catalogue() == before  # nothing written while waiting

    show = stack.cli("approvals", "show", approval.id)
    assert show.code == 0 and '"before"' in show.out and "6.85" in show.out

    assert stack.cli("approve", approval.id, "--by", "dana").code == 0
    assert final(run_id).status is RunStatus.SUCCEEDED
    after = catalogue()
    assert after["TEA-001"][1:] == (Decimal("6.85"), before["TEA-001"][2], run_id)
    assert after["TEA-002"][1] == Decimal("10.40")
    assert {k: v for k, v in after.items() if k not in ("TEA-001", "TEA-002")} == {
        k: v for k, v in before.items() if k not in ("TEA-001", "TEA-002")
    }


@pytest.mark.parametrize("ending", ["reject", "timeout", "cancel"])
def test_db_change_writes_nothing_unless_approved(stack: Stack, ending: str) -> None:
    ensure_catalogue()
    payload = json.loads((ROOT / "hitl" / "examples" / "db-change-restock.json").read_text())
    payload["review_timeout"] = "1s" if ending == "timeout" else "1h"
    before = catalogue()
    run_id = start(stack, "db-change", payload)
    approval = next_approval(run_id, 1) if ending != "timeout" else None
    if ending == "reject":
        assert stack.cli("reject", approval.id, "--by", "dana", "--reason", "not signed off").code == 0  # type: ignore[union-attr]
    elif ending == "cancel":
        assert stack.cli("runs", "cancel", run_id).code == 0
    expected = {"reject": RunStatus.REJECTED, "timeout": RunStatus.TIMED_OUT, "cancel": RunStatus.CANCELLED}
    assert final(run_id).status is expected[ending]
    assert catalogue() == before


def test_db_change_invalid_request_is_refused_before_anyone_is_asked(stack: Stack) -> None:
    runs_before = len(hitl.list_runs(limit=10_000))
    bad = {"requested_by": "x", "reason": "y", "changes": [{"sku": "TEA-001", "set": {"price": "-3"}}]}
    res = stack.cli("start", "db-change", "--payload", json.dumps(bad))
    assert res.code == 2
    assert "changes.0.set.price" in res.err and "greater than 0" in res.err
    empty = {"requested_by": "x", "reason": "y", "changes": [{"sku": "TEA-001", "set": {}}]}
    assert stack.cli("start", "db-change", "--payload", json.dumps(empty)).code == 2
    assert len(hitl.list_runs(limit=10_000)) == runs_before


def test_db_change_unknown_row_fails_the_run_without_an_approval(stack: Stack) -> None:
    run_id = start(
        stack, "db-change", {"requested_by": "x", "reason": "y", "changes": [{"sku": "NOPE-1", "set": {"stock": 1}}]}
    )
    run = final(run_id)
    assert run.status is RunStatus.FAILED
    assert "NOPE-1" in (run.error or "")
    assert hitl.list_approvals(status=None, run_id=run_id) == []


def test_seed_is_what_the_catalogue_starts_from(stack: Stack) -> None:
    ensure_catalogue()
    assert {r["sku"] for r in SEED} <= set(catalogue())


# ------------------------------------------------------------------ cron job on beat


def test_pending_digest_lists_long_pending_approvals(stack: Stack) -> None:
    run_id = start(stack, "gate", {})
    approval = next_approval(run_id, 1)
    res = stack.cli("approvals", "list", "--older-than", "0", "--json")
    assert approval.id in {a["id"] for a in res.json()}
    # Beat sends the digest at the next minute boundary (crontab "* * * * *" in this stack).

    def digest_with_it() -> Digest | None:
        with session_scope() as s:
            for d in s.scalars(select(Digest).order_by(Digest.id.desc())):
                if approval.id in {e["approval_id"] for e in d.approvals}:
                    return d
        return None

    assert wait_for(digest_with_it, timeout=75, interval=1, what="a digest from beat listing the approval")
