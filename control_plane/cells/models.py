"""Tables of the cells registry and of where each tenant lives (its placement and starter content)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base, UTCDateTime, utcnow
from kernel.tenancy import TenantScoped

# Cells belong to the installation, not to a tenant (a Pattern A cell names the one tenant it serves).
GLOBAL_TABLES = frozenset({"cells"})


class Cell(Base):
    """A data-plane cell: pooled (Pattern B, many tenants) or dedicated (Pattern A, one tenant's account)."""

    __tablename__ = "cells"
    __table_args__ = (
        CheckConstraint("pattern IN ('A', 'B')", name="pattern"),
        CheckConstraint("status IN ('active', 'draining', 'retired')", name="status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    pattern: Mapped[str] = mapped_column(String(1))
    # An AWS region, or "*" for the built-in cell that takes any region no other cell serves.
    region: Mapped[str] = mapped_column(String(40), index=True)
    endpoint: Mapped[str] = mapped_column(String(400), default="")
    # How many tenants a pooled cell takes.
    capacity: Mapped[int] = mapped_column(Integer, default=100)
    status: Mapped[str] = mapped_column(String(20), default="active")
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Pattern A: the tenant this dedicated cell serves.
    dedicated_tenant_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # The credential is derived from the installation's cell secret and this version (see ``cell_credential``),
    # so the control plane can present it to the cell too; only its SHA-256 is stored, to recognise it.
    credential_version: Mapped[int] = mapped_column(Integer, default=0)
    # SHA-256 of the credential the cell presents; the previous one is honoured until its grace ends.
    credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    credential_prefix: Mapped[str | None] = mapped_column(String(24))
    previous_credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    previous_valid_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # What the cell's infrastructure reported (e.g. CloudFormation stack outputs).
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class TenantPlacement(TenantScoped, Base):
    """Where a tenant lives and what it was given: cell, template version, resources, starter content."""

    __tablename__ = "tenant_placements"

    tenant_id: Mapped[str] = mapped_column(  # type: ignore[assignment]
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    cell_id: Mapped[str | None] = mapped_column(ForeignKey("cells.id", ondelete="SET NULL"), index=True)
    template: Mapped[str] = mapped_column(String(40))
    template_version: Mapped[int] = mapped_column(Integer)
    # Where each part of the tenant's space lives (profiles, lake prefix, stack, ...).
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Tracking plan, segments, dashboards, CRM pipelines and journeys, kept for the features that use them.
    starter_content: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Pattern A: the client's role and the ExternalId its trust policy must require.
    role_arn: Mapped[str | None] = mapped_column(String(200))
    external_id: Mapped[str | None] = mapped_column(String(100))
    # Where deprovisioning archived the tenant's data.
    archive_location: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
