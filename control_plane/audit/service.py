"""Append and list audit entries."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit import schemas
from control_plane.db.models import AuditEntry
from control_plane.identity.principal import Principal
from kernel.db import new_id, utcnow
from kernel.http import current_request
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.tenancy import dangerously_unscoped, tenant_scope


def _actor() -> tuple[str, str | None, str | None]:
    context = current_request()
    principal: Principal | None = context.principal if context else None
    if principal is not None:
        return principal.kind, principal.id, principal.label
    return ("anonymous", None, None) if context and context.method else ("system", None, None)


def build_entry(
    action: str,
    *,
    tenant_id: str | None,
    target_type: str | None = None,
    target_id: str | None = None,
    outcome: str = "success",
    status_code: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """An entry stamped with the current actor, source IP and request id."""
    context = current_request()
    actor_type, actor_id, actor_label = _actor()
    return AuditEntry(
        id=new_id("aud"),
        occurred_at=utcnow(),
        tenant_id=tenant_id,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_label=actor_label,
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        status_code=status_code,
        source_ip=context.source_ip if context else None,
        request_id=context.request_id if context else None,
        details=details or {},
    )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """Query bounds without an offset are taken as UTC."""
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


class AuditService:
    def __init__(self, db: AsyncSession) -> None:
        self.db = db

    def record(
        self,
        action: str,
        *,
        tenant_id: str | None,
        target_type: str | None = None,
        target_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Add a success entry to the caller's transaction: it commits with the change or not at all."""
        self.db.add(
            build_entry(action, tenant_id=tenant_id, target_type=target_type, target_id=target_id, details=details)
        )

    async def list(
        self,
        *,
        tenant_id: str | None,
        action: str | None = None,
        actor_id: str | None = None,
        target_id: str | None = None,
        outcome: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> schemas.AuditPage:
        """Newest first. ``tenant_id=None`` lists every tenant's entries and the platform's (ops only)."""
        query = select(AuditEntry)
        if tenant_id is not None:
            query = query.where(AuditEntry.tenant_id == tenant_id)
        for column, value in (
            (AuditEntry.action, action),
            (AuditEntry.actor_id, actor_id),
            (AuditEntry.target_id, target_id),
            (AuditEntry.outcome, outcome),
        ):
            if value is not None:
                query = query.where(column == value)
        since, until = (_utc(since), _utc(until))
        if since is not None:
            query = query.where(AuditEntry.occurred_at >= since)
        if until is not None:
            query = query.where(AuditEntry.occurred_at < until)
        query = keyset(query, AuditEntry.occurred_at, AuditEntry.id, cursor, newest_first=True, limit=limit)
        with dangerously_unscoped() if tenant_id is None else tenant_scope(tenant_id):
            rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda e: (e.occurred_at, e.id))
        return schemas.AuditPage(
            items=[msgspec.convert(row, schemas.AuditEntry, from_attributes=True) for row in rows],
            next_cursor=next_cursor,
        )
