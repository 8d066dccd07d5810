"""Control-plane tables. Tenant-scoped tables mix in ``TenantScoped``; the rest are global."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base, UTCDateTime, utcnow
from kernel.tenancy import TenantScoped

TENANT_STATUSES = ("pending", "provisioning", "active", "suspended", "deleting", "deleted", "failed")

# Tables that hold no tenant's rows; the architecture test checks every other table is TenantScoped.
GLOBAL_TABLES = frozenset({"tenants", "users", "user_sessions", "alembic_version"})


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("deployment_pattern IN ('A', 'B')", name="deployment_pattern"),
        CheckConstraint(f"status IN {TENANT_STATUSES!r}", name="status"),
        Index("ix_tenants_created", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    plan: Mapped[str] = mapped_column(String(40))
    deployment_pattern: Mapped[str] = mapped_column(String(1))
    region: Mapped[str] = mapped_column(String(40))
    template: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    status_changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # NULL until the user accepts an invitation and chooses a password.
    password_hash: Mapped[str | None] = mapped_column(String(200))
    platform_role: Mapped[str | None] = mapped_column(String(20))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class UserSession(Base):
    """A signed-in session; the token is known only to the client, we keep its SHA-256."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    source_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))


class Membership(TenantScoped, Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("tenant_id", "user_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)  # type: ignore[assignment]
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Invite(TenantScoped, Base):
    """An invitation to a tenant role, or (tenant_id NULL) to a platform role."""

    __tablename__ = "invites"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    accepted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ApiKey(TenantScoped, Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)  # type: ignore[assignment]
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(24))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The secret a rotation replaced, honoured until previous_valid_until.
    previous_secret_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    previous_valid_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    rotated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Source(TenantScoped, Base):
    """Where a tenant's events come from; its write key authenticates the SDK at the cell."""

    __tablename__ = "sources"
    __table_args__ = (CheckConstraint("kind IN ('web', 'server', 'mobile')", name="kind"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)  # type: ignore[assignment]
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))
    write_key_prefix: Mapped[str] = mapped_column(String(24))
    write_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The key a rotation replaced, honoured until previous_valid_until.
    previous_write_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    previous_valid_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Browser sources: the page origins allowed to send with this key (CORS).
    allowed_origins: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    rotated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(TenantScoped, Base):
    """Append-only: no API edits or deletes it, and a database trigger refuses UPDATE and DELETE."""

    __tablename__ = "audit_entries"
    __table_args__ = (Index("ix_audit_entries_occurred", "occurred_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # No foreign key: the trail outlives the tenant it describes.
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[str | None] = mapped_column(String(40), index=True)
    actor_label: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(60), index=True)
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(80))
    outcome: Mapped[str] = mapped_column(String(20))
    status_code: Mapped[int | None] = mapped_column(Integer)
    source_ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# Feature tables kept in their own package; imported here so the metadata (and Alembic) sees them.
from billing.models import GLOBAL_TABLES as _BILLING_GLOBAL_TABLES  # noqa: E402
from control_plane.sso.models import SsoConnection, SsoDomain, SsoIdentity, SsoSession  # noqa: E402, F401

GLOBAL_TABLES = GLOBAL_TABLES | _BILLING_GLOBAL_TABLES
from control_plane.cells.models import GLOBAL_TABLES as _CELLS_GLOBAL_TABLES  # noqa: E402
from control_plane.cells.models import Cell, TenantPlacement  # noqa: E402, F401
from provisioning.models import ProvisioningRun, ProvisioningStep  # noqa: E402, F401

GLOBAL_TABLES = GLOBAL_TABLES | _CELLS_GLOBAL_TABLES
from control_plane.identity.models import GLOBAL_TABLES as _IDENTITY_GLOBAL_TABLES  # noqa: E402
from control_plane.identity.models import PasswordReset  # noqa: E402, F401

GLOBAL_TABLES = GLOBAL_TABLES | _IDENTITY_GLOBAL_TABLES
