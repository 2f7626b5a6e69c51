"""The ``db-change`` workflow: a proposed change to catalogue rows, gated by a person.

Chain: ``plan_change | wait_for_approval(dba-review) | apply_change``. The request is validated by pydantic
before the run exists (``hitl start`` exits 2 on a bad one); ``plan_change`` checks it against the table and
turns it into a before/after diff, which is what the reviewer sees. ``apply_change`` writes every row in one
transaction on approval, only if the rows still hold their reviewed "before" values; on rejection,
timeout or cancellation nothing is written.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

import hitl
from hitl.examples.store import Product, create_app_tables
from hitl.infra.db import session_scope

REVIEW_KEY = "dba-review"
FIELDS = ("name", "price", "stock")

#: The catalogue the example starts from (seeded into ``app_products`` when the table is empty).
SEED = [
    {"id": 1, "sku": "TEA-001", "name": "Green tea, 100 g", "price": "6.50", "stock": 120},
    {"id": 2, "sku": "TEA-002", "name": "Black tea, 250 g", "price": "9.90", "stock": 80},
    {"id": 3, "sku": "MUG-001", "name": "Stoneware mug", "price": "14.00", "stock": 35},
    {"id": 4, "sku": "POT-001", "name": "Cast-iron teapot", "price": "49.00", "stock": 12},
]


class ProductPatch(BaseModel):
    """New values for one product; at least one field."""

    model_config = {"extra": "forbid"}

    name: str | None = Field(None, min_length=1, max_length=200)
    price: Decimal | None = Field(None, gt=0, max_digits=10, decimal_places=2)
    stock: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _not_empty(self) -> ProductPatch:
        if not self.values():
            raise ValueError("a change must set at least one of name, price, stock")
        return self

    def values(self) -> dict[str, Any]:
        """The fields this patch sets (``None`` means "leave as is"), JSON-mode."""
        return {k: v for k, v in self.model_dump(mode="json").items() if v is not None}


class RowChange(BaseModel):
    """A change to the product with ``sku``."""

    model_config = {"extra": "forbid"}

    sku: str = Field(min_length=1, max_length=64)
    set: ProductPatch


class ChangeRequest(BaseModel):
    """Input of ``db-change``."""

    model_config = {"extra": "forbid"}

    table: Literal["app_products"] = "app_products"
    requested_by: str = Field(min_length=1)
    reason: str = Field(min_length=1, max_length=2000)
    changes: list[RowChange] = Field(min_length=1, max_length=500)
    review_timeout: str = "4h"
    assignees: list[str] = Field(default_factory=lambda: ["dba"])


def _row(p: Product) -> dict[str, Any]:
    return {"name": p.name, "price": str(p.price), "stock": p.stock}


def ensure_catalogue() -> None:
    """Create the catalogue table and seed it with :data:`SEED` when it is empty."""
    create_app_tables()
    with session_scope() as s:
        if not s.scalar(select(func.count()).select_from(Product)):
            s.add_all(Product(**{**row, "price": Decimal(str(row["price"]))}) for row in SEED)


@hitl.step(name="tasks.dbchange.plan_change")
def plan_change(request: dict[str, Any]) -> dict[str, Any]:
    """Check the request against the table and return the before/after diff the reviewer sees."""
    req = ChangeRequest.model_validate(request)
    ensure_catalogue()
    diff = []
    with session_scope() as s:
        for change in req.changes:
            product = s.scalar(select(Product).where(Product.sku == change.sku))
            if product is None:
                raise hitl.Stop(hitl.RunStatus.FAILED, reason=f"no product with sku {change.sku!r}; nothing asked")
            before = _row(product)
            after = {**before, **change.set.values()}
            diff.append(
                {
                    "sku": change.sku,
                    "before": before,
                    "after": after,
                    "changed": sorted(k for k in FIELDS if before[k] != after[k]),
                }
            )
    return {"table": req.table, "requested_by": req.requested_by, "reason": req.reason, "rows": diff}


@hitl.step(name="tasks.dbchange.apply_change", transactional=True)
def apply_change(decision: hitl.Decision, run_id: str, session: Session) -> dict[str, Any]:
    """Apply the reviewed diff on approval, in the step's one transaction; write nothing otherwise."""
    if decision.outcome is hitl.Outcome.REJECTED:
        raise hitl.Stop(hitl.RunStatus.REJECTED, {"applied": 0}, reason=f"rejected: {decision.comment or ''}")
    if decision.outcome is hitl.Outcome.TIMED_OUT:
        raise hitl.Stop(hitl.RunStatus.TIMED_OUT, {"applied": 0}, reason="no reviewer decided before the deadline")
    rows = decision.subject["rows"]
    for row in rows:
        before, after = row["before"], row["after"]
        stmt = (
            update(Product)
            .where(
                Product.sku == row["sku"],
                Product.name == before["name"],
                Product.price == Decimal(before["price"]),
                Product.stock == before["stock"],
            )
            .values(name=after["name"], price=Decimal(after["price"]), stock=after["stock"], changed_by_run=run_id)
        )
        if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
            # hitl.Stop rolls the step's transaction back: the rows already updated are restored.
            raise hitl.Stop(
                hitl.RunStatus.FAILED,
                {"applied": 0},
                reason=f"row {row['sku']} changed since it was reviewed; nothing written",
            )
    return {"applied": len(rows)}


@hitl.workflow("db-change", input=ChangeRequest)
def db_change(request: dict[str, Any]) -> Any:
    """Propose a change to catalogue rows; apply it in one transaction once a reviewer approves."""
    return (
        plan_change.s(request)
        | hitl.wait_for_approval.s(key=REVIEW_KEY, timeout=request["review_timeout"], assignees=request["assignees"])
        | apply_change.s()
    )
