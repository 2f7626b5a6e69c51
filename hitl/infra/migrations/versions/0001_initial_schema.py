"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "hitl_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workflow", sa.String(length=200), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "running",
                "waiting",
                "succeeded",
                "rejected",
                "timed_out",
                "failed",
                "cancelled",
                name="runstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("hitl_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hitl_runs_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_hitl_runs_workflow"), ["workflow"], unique=False)

    op.create_table(
        "hitl_approvals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "approved",
                "rejected",
                "timed_out",
                "cancelled",
                name="approvalstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("step_task_id", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.JSON(), nullable=False),
        sa.Column("assignees", sa.JSON(), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("continuation", sa.JSON(), nullable=False),
        sa.Column("on_reject", sa.JSON(), nullable=True),
        sa.Column("on_timeout", sa.JSON(), nullable=True),
        sa.Column("timeout_default", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["hitl_runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("step_task_id"),
    )
    with op.batch_alter_table("hitl_approvals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hitl_approvals_run_id"), ["run_id"], unique=False)
        batch_op.create_index("ix_hitl_approvals_status_deadline", ["status", "deadline"], unique=False)

    op.create_table(
        "hitl_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["hitl_runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id"),
    )
    with op.batch_alter_table("hitl_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hitl_outbox_run_id"), ["run_id"], unique=False)
        batch_op.create_index("ix_hitl_outbox_undelivered", ["delivered_at", "sent_at"], unique=False)

    op.create_table(
        "hitl_run_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "created",
                "step_finished",
                "step_failed",
                "step_skipped",
                "waiting_for_input",
                "input_resolved",
                "run_finished",
                name="eventkind",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["hitl_runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("hitl_run_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hitl_run_events_run_id"), ["run_id"], unique=False)

    op.create_table(
        "hitl_steps",
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "started",
                "finished",
                "waiting",
                "replaced",
                "stopped",
                "failed",
                name="stepstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("next_task_id", sa.String(length=255), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["hitl_runs.id"],
        ),
        sa.PrimaryKeyConstraint("task_id"),
    )
    with op.batch_alter_table("hitl_steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hitl_steps_run_id"), ["run_id"], unique=False)

    op.create_table(
        "hitl_decisions",
        sa.Column("approval_id", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            ["hitl_approvals.id"],
        ),
        sa.PrimaryKeyConstraint("approval_id"),
    )


def downgrade() -> None:

    op.drop_table("hitl_decisions")
    with op.batch_alter_table("hitl_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hitl_steps_run_id"))

    op.drop_table("hitl_steps")
    with op.batch_alter_table("hitl_run_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hitl_run_events_run_id"))

    op.drop_table("hitl_run_events")
    with op.batch_alter_table("hitl_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hitl_outbox_undelivered")
        batch_op.drop_index(batch_op.f("ix_hitl_outbox_run_id"))

    op.drop_table("hitl_outbox")
    with op.batch_alter_table("hitl_approvals", schema=None) as batch_op:
        batch_op.drop_index("ix_hitl_approvals_status_deadline")
        batch_op.drop_index(batch_op.f("ix_hitl_approvals_run_id"))

    op.drop_table("hitl_approvals")
    with op.batch_alter_table("hitl_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hitl_runs_workflow"))
        batch_op.drop_index(batch_op.f("ix_hitl_runs_status"))

    op.drop_table("hitl_runs")
