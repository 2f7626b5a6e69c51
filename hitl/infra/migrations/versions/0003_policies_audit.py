"""approval policies (quorum votes, groups, reminders, escalation, lookback), notifications, audit log, blobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("hitl_runs", sa.Column("requester", sa.String(length=200), nullable=True))
    with op.batch_alter_table("hitl_approvals") as batch:
        batch.alter_column("run_id", existing_type=sa.String(length=32), nullable=True)
        batch.alter_column("step_task_id", existing_type=sa.String(length=255), nullable=True)
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("policy", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("requester", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("stage", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_reminder_at", TS, nullable=True))
        batch.add_column(sa.Column("reminders_sent", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("escalate_at", TS, nullable=True))
        batch.add_column(sa.Column("escalated_at", TS, nullable=True))
        batch.create_unique_constraint("uq_hitl_approvals_idempotency_key", ["idempotency_key"])
        batch.create_index("ix_hitl_approvals_status_reminder", ["status", "next_reminder_at"])
        batch.create_index("ix_hitl_approvals_status_escalate", ["status", "escalate_at"])
    op.create_table(
        "hitl_votes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("approval_id", sa.String(length=32), sa.ForeignKey("hitl_approvals.id"), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("approval_id", "stage", "actor", name="uq_hitl_votes_one_per_person"),
    )
    op.create_index("ix_hitl_votes_approval_id", "hitl_votes", ["approval_id"])
    op.create_table(
        "hitl_group_members",
        sa.Column("group", sa.String(length=200), nullable=False),
        sa.Column("member", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("group", "member"),
    )
    op.create_table(
        "hitl_notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("approval_id", sa.String(length=32), sa.ForeignKey("hitl_approvals.id"), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("approval_id", "kind", "seq", name="uq_hitl_notifications_once"),
    )
    op.create_index("ix_hitl_notifications_approval_id", "hitl_notifications", ["approval_id"])
    op.create_index("ix_hitl_notifications_unsent", "hitl_notifications", ["sent_at", "next_attempt_at"])
    op.create_table(
        "hitl_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("approval_id", sa.String(length=32), nullable=True),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hash"),
    )
    op.create_index("ix_hitl_audit_approval_id", "hitl_audit", ["approval_id"])
    op.create_index("ix_hitl_audit_run_id", "hitl_audit", ["run_id"])
    op.create_table(
        "hitl_blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )


def downgrade() -> None:
    op.drop_table("hitl_blobs")
    op.drop_index("ix_hitl_audit_run_id", table_name="hitl_audit")
    op.drop_index("ix_hitl_audit_approval_id", table_name="hitl_audit")
    op.drop_table("hitl_audit")
    op.drop_index("ix_hitl_notifications_unsent", table_name="hitl_notifications")
    op.drop_index("ix_hitl_notifications_approval_id", table_name="hitl_notifications")
    op.drop_table("hitl_notifications")
    op.drop_table("hitl_group_members")
    op.drop_index("ix_hitl_votes_approval_id", table_name="hitl_votes")
    op.drop_table("hitl_votes")
    with op.batch_alter_table("hitl_approvals") as batch:
        batch.drop_index("ix_hitl_approvals_status_escalate")
        batch.drop_index("ix_hitl_approvals_status_reminder")
        batch.drop_constraint("uq_hitl_approvals_idempotency_key", type_="unique")
        for col in (
            "escalated_at",
            "reminders_sent",
            "next_reminder_at",
            "stage",
            "requester",
            "policy",
            "idempotency_key",
        ):
            batch.drop_column(col)
        batch.alter_column("step_task_id", existing_type=sa.String(length=255), nullable=False)
        batch.alter_column("run_id", existing_type=sa.String(length=32), nullable=False)
    with op.batch_alter_table("hitl_runs") as batch:
        batch.drop_column("requester")
