"""SSO tables: per-tenant OpenID Connect connections, their email domains, linked identities and sessions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base, UTCDateTime, utcnow
from kernel.tenancy import TenantScoped


class SsoConnection(TenantScoped, Base):
    """A tenant's OpenID provider. The client secret is stored encrypted (see ``control_plane.sso.crypto``)."""

    __tablename__ = "sso_connections"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)  # type: ignore[assignment]
    name: Mapped[str] = mapped_column(String(200))
    issuer: Mapped[str] = mapped_column(String(500))
    client_id: Mapped[str] = mapped_column(String(300))
    client_secret_encrypted: Mapped[str] = mapped_column(Text)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    # Emails the provider may sign in; unique across tenants (sso_domains), so an email finds one connection.
    allowed_domains: Mapped[list[str]] = mapped_column(JSON)
    # ID-token claim read for the role (a string or a list of strings) and value -> tenant role.
    role_claim: Mapped[str | None] = mapped_column(String(100))
    role_mapping: Mapped[dict[str, Any]] = mapped_column(JSON)
    default_role: Mapped[str] = mapped_column(String(20))
    # Password sign-in refused for this tenant's members whose email is in allowed_domains.
    enforce_sso: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_tested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_test_ok: Mapped[bool | None] = mapped_column(Boolean)


class SsoDomain(TenantScoped, Base):
    """One email domain of one connection; the unique constraint keeps domain discovery unambiguous."""

    __tablename__ = "sso_domains"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)  # type: ignore[assignment]
    connection_id: Mapped[str] = mapped_column(ForeignKey("sso_connections.id", ondelete="CASCADE"), index=True)


class SsoIdentity(TenantScoped, Base):
    """A user known to a connection as (issuer, ``sub``); created at the first sign-in through it."""

    __tablename__ = "sso_identities"
    __table_args__ = (
        UniqueConstraint("connection_id", "subject"),
        Index("ix_sso_identities_issuer_subject", "issuer", "subject"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)  # type: ignore[assignment]
    connection_id: Mapped[str] = mapped_column(ForeignKey("sso_connections.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class SsoSession(TenantScoped, Base):
    """Marks a user session as opened through a connection: it ends when the user leaves that tenant."""

    __tablename__ = "sso_sessions"

    session_id: Mapped[str] = mapped_column(ForeignKey("user_sessions.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)  # type: ignore[assignment]
    connection_id: Mapped[str] = mapped_column(ForeignKey("sso_connections.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
