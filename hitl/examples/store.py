"""The example application's own tables (published articles, the product catalogue).

They live in the same database as hitl's tables, under their own declarative base: hitl does not own them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import Integer, Numeric, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from approvals.models import UtcDateTime
from hitl.infra.db import get_engine


class AppBase(DeclarativeBase):
    """Declarative base of the example application's tables."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime}


class Article(AppBase):
    """A published article (written by the content-review workflow on approval)."""

    __tablename__ = "app_articles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), unique=True)
    topic: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    revisions: Mapped[int] = mapped_column(Integer)
    approved_by: Mapped[str] = mapped_column(String(200))
    published_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


class Product(AppBase):
    """A row of the product catalogue that the db-change workflow edits."""

    __tablename__ = "app_products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    stock: Mapped[int] = mapped_column(Integer)
    #: The run that last changed this row (``None`` for seeded rows): makes applying a change idempotent.
    changed_by_run: Mapped[str | None] = mapped_column(String(32), nullable=True)


def create_app_tables() -> None:
    """Create the example application's tables if missing (idempotent)."""
    AppBase.metadata.create_all(get_engine())
