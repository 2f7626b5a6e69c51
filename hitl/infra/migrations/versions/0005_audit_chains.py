"""audit log in chains: a ``chain`` column and its ``(chain, id)`` index; existing entries become chain ``legacy``

Before, every entry chained onto the newest entry of the whole log, under one lock. Now each entry chains
onto the newest of its own chain (its run's id, ``approval:<id>``, ``-`` or ``anchor``; see ``hitl.core.audit``).
The entries already written keep their hashes: they go to chain ``legacy``, whose hashes are computed, as
they were, without ``chain`` (``hitl.core.audit_chains.entry_hash``), and still link to each other in id order.
The column's default serves this upgrade only and is dropped: every new entry names its chain.

Downgrading drops the column: the entries written since then no longer verify as one chain.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PostgreSQL stores a constant default once in the catalogue (no table rewrite); SQLite's ADD COLUMN too.
    op.add_column("hitl_audit", sa.Column("chain", sa.String(length=64), nullable=False, server_default="legacy"))
    with op.batch_alter_table("hitl_audit") as batch:  # SQLite: a table copy (it cannot drop a default in place)
        batch.alter_column("chain", existing_type=sa.String(length=64), existing_nullable=False, server_default=None)
    op.create_index("ix_hitl_audit_chain_id", "hitl_audit", ["chain", "id"])


def downgrade() -> None:
    op.drop_index("ix_hitl_audit_chain_id", table_name="hitl_audit")
    with op.batch_alter_table("hitl_audit") as batch:
        batch.drop_column("chain")
