"""Tables of provisioning runs and their steps (in the control plane's database)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base, UTCDateTime, utcnow
from kernel.tenancy import TenantScoped

OPERATIONS = ("provision", "upgrade", "suspend", "resume", "deprovision", "rollback")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "rolled_back")
STEP_STATUSES = ("pending", "running", "retrying", "succeeded", "failed", "skipped")


class ProvisioningRun(TenantScoped, Base):
    """One tenant operation as a persisted state machine of steps; the lease keeps one executor at a time."""

    __tablename__ = "provisioning_runs"
    __table_args__ = (
        CheckConstraint(f"operation IN {OPERATIONS!r}", name="operation"),
        CheckConstraint(f"status IN {RUN_STATUSES!r}", name="status"),
        Index("ix_provisioning_runs_created", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)  # type: ignore[assignment]
    operation: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), index=True)
    driver: Mapped[str] = mapped_column(String(20))
    template: Mapped[str] = mapped_column(String(40))
    template_version: Mapped[int] = mapped_column(Integer)
    # Operation inputs (e.g. the role ARN of a Pattern A tenant, the reason of a suspension).
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # The run this one rolls back.
    rollback_of: Mapped[str | None] = mapped_column(String(40))
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ProvisioningStep(TenantScoped, Base):
    __tablename__ = "provisioning_steps"
    __table_args__ = (
        CheckConstraint(f"status IN {STEP_STATUSES!r}", name="status"),
        UniqueConstraint("run_id", "position"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("provisioning_runs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)  # type: ignore[assignment]
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(60))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
