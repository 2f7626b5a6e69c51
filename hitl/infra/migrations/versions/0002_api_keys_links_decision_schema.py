"""API keys, used single-use link nonces, and the decision schema of an approval

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hitl_approvals", sa.Column("decision_schema", sa.JSON(), nullable=True))
    op.create_table(
        "hitl_api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_table(
        "hitl_used_tokens",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("approval_id", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["approval_id"], ["hitl_approvals.id"]),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_index("ix_hitl_used_tokens_approval_id", "hitl_used_tokens", ["approval_id"])


def downgrade() -> None:
    op.drop_index("ix_hitl_used_tokens_approval_id", table_name="hitl_used_tokens")
    op.drop_table("hitl_used_tokens")
    op.drop_table("hitl_api_keys")
    with op.batch_alter_table("hitl_approvals") as batch:
        batch.drop_column("decision_schema")
