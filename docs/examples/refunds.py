"""The tutorial's workflow: a refund, looked at by a person before it is paid.

Two plain Celery tasks around a wait. ``quote`` works out what would be refunded; that result is what the
approver sees. The run then waits, holding no worker, until someone decides (or an hour passes); ``pay``
receives the decision. Run it with ``HITL_WORKFLOW_MODULES='["refunds"]'`` from the folder holding this file.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

import hitl


# --8<-- [start:workflow]
@shared_task(name="refunds.quote")
def quote(request: dict[str, Any]) -> dict[str, Any]:
    """What would be refunded: the subject of the approval."""
    return {"order": request["order"], "customer": request["customer"], "amount_cents": request["amount_cents"]}


@shared_task(name="refunds.pay")
def pay(decision: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Pay the refund if it was approved (a plain task receives the decision as JSON, and ``run_id`` because it
    declares the parameter)."""
    d = hitl.Decision.model_validate(decision)
    if d.outcome is not hitl.Outcome.APPROVED:
        return {"paid": False, "outcome": d.outcome.value, "comment": d.comment}
    # A real task would call the payment provider here, keyed by run_id so a second delivery pays once.
    return {"paid": True, "amount_cents": d.subject["amount_cents"], "approved_by": d.actor, "payment_ref": run_id}


@hitl.workflow("refund")
def refund(request: dict[str, Any]) -> Any:
    """Refund an order once a person approves it."""
    return quote.s(request) | hitl.wait_for_approval.s(key="refund-review", timeout="1h") | pay.s()


# --8<-- [end:workflow]
