"""Audit trail endpoints (read only: entries cannot be changed or deleted)."""

from __future__ import annotations

import datetime as dt

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from control_plane.audit import schemas
from control_plane.runtime import Services
from control_plane.tenants.routes import Limit
from kernel.pagination import DEFAULT_LIMIT


class AuditController(Controller):
    tags = ["Audit"]

    @get("/api/v1/audit", operation_id="ListAuditEntries", opt={"permission": ("audit", "read")})
    async def list_all(
        self,
        services: NamedDependency[Services],
        tenant_id: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        actor_id: FromQuery[str | None] = None,
        target_id: FromQuery[str | None] = None,
        outcome: FromQuery[schemas.Outcome | None] = None,
        since: FromQuery[dt.datetime | None] = None,
        until: FromQuery[dt.datetime | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.AuditPage:
        """Every tenant's audit entries and the platform's own, newest first (Livora staff)."""
        return await services.audit.list(
            tenant_id=tenant_id or None,
            action=action,
            actor_id=actor_id,
            target_id=target_id,
            outcome=outcome,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )

    @get(
        "/api/v1/tenants/{tenant_id:str}/audit",
        operation_id="ListTenantAuditEntries",
        opt={"permission": ("audit", "read")},
    )
    async def list_for_tenant(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        action: FromQuery[str | None] = None,
        actor_id: FromQuery[str | None] = None,
        target_id: FromQuery[str | None] = None,
        outcome: FromQuery[schemas.Outcome | None] = None,
        since: FromQuery[dt.datetime | None] = None,
        until: FromQuery[dt.datetime | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.AuditPage:
        """This tenant's audit entries, newest first."""
        return await services.audit.list(
            tenant_id=tenant_id,
            action=action,
            actor_id=actor_id,
            target_id=target_id,
            outcome=outcome,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )
