"""Provisioning: the cells registry, tenant placements, provisioning runs and their steps; tenants may be `failed`.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kernel.db

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None

OLD_STATUSES = "('pending', 'provisioning', 'active', 'suspended', 'deleting', 'deleted')"
NEW_STATUSES = "('pending', 'provisioning', 'active', 'suspended', 'deleting', 'deleted', 'failed')"


def _tenant_statuses(statuses: str) -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_tenants_status"), type_="check")
        batch_op.create_check_constraint("status", f"status IN {statuses}")


def upgrade() -> None:
    _tenant_statuses(NEW_STATUSES)
    op.create_table(
        "cells",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("pattern", sa.String(length=1), nullable=False),
        sa.Column("region", sa.String(length=40), nullable=False),
        sa.Column("endpoint", sa.String(length=400), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("dedicated_tenant_id", sa.String(length=40), nullable=True),
        sa.Column("credential_version", sa.Integer(), nullable=False),
        sa.Column("credential_hash", sa.String(length=64), nullable=True),
        sa.Column("credential_prefix", sa.String(length=24), nullable=True),
        sa.Column("previous_credential_hash", sa.String(length=64), nullable=True),
        sa.Column("previous_valid_until", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("created_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("pattern IN ('A', 'B')", name=op.f("ck_cells_pattern")),
        sa.CheckConstraint("status IN ('active', 'draining', 'retired')", name=op.f("ck_cells_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cells")),
        sa.UniqueConstraint("credential_hash", name=op.f("uq_cells_credential_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_cells_name")),
        sa.UniqueConstraint("previous_credential_hash", name=op.f("uq_cells_previous_credential_hash")),
    )
    with op.batch_alter_table("cells", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cells_dedicated_tenant_id"), ["dedicated_tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cells_region"), ["region"], unique=False)

    op.create_table(
        "provisioning_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("operation", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("driver", sa.String(length=20), nullable=False),
        sa.Column("template", sa.String(length=40), nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("rollback_of", sa.String(length=40), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "operation IN ('provision', 'upgrade', 'suspend', 'resume', 'deprovision', 'rollback')",
            name=op.f("ck_provisioning_runs_operation"),
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'rolled_back')",
            name=op.f("ck_provisioning_runs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_provisioning_runs_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provisioning_runs")),
    )
    with op.batch_alter_table("provisioning_runs", schema=None) as batch_op:
        batch_op.create_index("ix_provisioning_runs_created", ["created_at", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_provisioning_runs_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_provisioning_runs_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "tenant_placements",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("cell_id", sa.String(length=40), nullable=True),
        sa.Column("template", sa.String(length=40), nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("starter_content", sa.JSON(), nullable=False),
        sa.Column("role_arn", sa.String(length=200), nullable=True),
        sa.Column("external_id", sa.String(length=100), nullable=True),
        sa.Column("archive_location", sa.Text(), nullable=True),
        sa.Column("created_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cell_id"], ["cells.id"], name=op.f("fk_tenant_placements_cell_id_cells"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_placements_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_placements")),
    )
    with op.batch_alter_table("tenant_placements", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tenant_placements_cell_id"), ["cell_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tenant_placements_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "provisioning_steps",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=60), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("started_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'retrying', 'succeeded', 'failed', 'skipped')",
            name=op.f("ck_provisioning_steps_status"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["provisioning_runs.id"],
            name=op.f("fk_provisioning_steps_run_id_provisioning_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_provisioning_steps_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provisioning_steps")),
        sa.UniqueConstraint("run_id", "position", name=op.f("uq_provisioning_steps_run_id")),
    )
    with op.batch_alter_table("provisioning_steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_provisioning_steps_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_provisioning_steps_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("provisioning_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provisioning_steps_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_provisioning_steps_run_id"))

    op.drop_table("provisioning_steps")
    with op.batch_alter_table("tenant_placements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tenant_placements_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_tenant_placements_cell_id"))

    op.drop_table("tenant_placements")
    with op.batch_alter_table("provisioning_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provisioning_runs_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_provisioning_runs_status"))
        batch_op.drop_index("ix_provisioning_runs_created")

    op.drop_table("provisioning_runs")
    with op.batch_alter_table("cells", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cells_region"))
        batch_op.drop_index(batch_op.f("ix_cells_dedicated_tenant_id"))

    op.drop_table("cells")
    op.execute("UPDATE tenants SET status = 'pending' WHERE status = 'failed'")
    _tenant_statuses(OLD_STATUSES)
