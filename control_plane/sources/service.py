"""Create, list, change, rotate and revoke sources and their write keys."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit.service import AuditService
from control_plane.db.models import Source
from control_plane.identity.secrets import previous_after_rotation, token_hash
from control_plane.sources import schemas
from kernel.db import new_id, utcnow
from kernel.errors import Conflict, NotFound, ValidationFailed
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.tenancy import tenant_scope

WRITE_KEY_PREFIX = "lvw"


def new_write_key() -> tuple[str, str]:
    """``(write_key, visible_prefix)``: 192 random bits, URL-safe, fit for an HTTP Basic user name."""
    key = f"{WRITE_KEY_PREFIX}_{secrets.token_urlsafe(24)}"
    return key, key[:12]


def source_view(source: Source) -> schemas.Source:
    return schemas.Source(
        id=source.id,
        tenant_id=source.tenant_id,
        name=source.name,
        kind=source.kind,  # type: ignore[arg-type]
        write_key_prefix=source.write_key_prefix,
        allowed_origins=list(source.allowed_origins),
        status="revoked" if source.revoked_at else "active",
        created_at=source.created_at,
        updated_at=source.updated_at,
        rotated_at=source.rotated_at,
        previous_valid_until=source.previous_valid_until,
        revoked_at=source.revoked_at,
    )


def _check_origins(kind: str, origins: list[str]) -> None:
    if origins and kind != "web":
        raise ValidationFailed("Only web sources take allowed_origins.", code="origins_for_web_only")


class SourceService:
    def __init__(self, db: AsyncSession, audit: AuditService, max_grace_seconds: int) -> None:
        self.db = db
        self.audit = audit
        self.max_grace_seconds = max_grace_seconds

    async def _source(self, tenant_id: str, source_id: str) -> Source:
        source = await self.db.scalar(select(Source).where(Source.id == source_id, Source.tenant_id == tenant_id))
        if source is None:
            raise NotFound(f"No source {source_id}.", code="source_not_found")
        return source

    async def create(self, tenant_id: str, data: schemas.SourceCreate, created_by: str | None) -> schemas.SourceCreated:
        _check_origins(data.kind, data.allowed_origins)
        write_key, visible = new_write_key()
        source = Source(
            id=new_id("src"),
            tenant_id=tenant_id,
            name=data.name,
            kind=data.kind,
            write_key_prefix=visible,
            write_key_hash=token_hash(write_key),
            allowed_origins=sorted(set(data.allowed_origins)),
            created_by=created_by,
        )
        with tenant_scope(tenant_id):
            self.db.add(source)
            self.audit.record(
                "source.created",
                tenant_id=tenant_id,
                target_type="source",
                target_id=source.id,
                details={"name": data.name, "kind": data.kind},
            )
            await self.db.commit()
        return schemas.SourceCreated(source=source_view(source), write_key=write_key)

    async def list(
        self, tenant_id: str, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> schemas.SourcePage:
        query = keyset(
            select(Source).where(Source.tenant_id == tenant_id),
            Source.created_at,
            Source.id,
            cursor,
            newest_first=False,
            limit=limit,
        )
        with tenant_scope(tenant_id):
            rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda x: (x.created_at, x.id))
        return schemas.SourcePage(items=[source_view(x) for x in rows], next_cursor=next_cursor)

    async def get(self, tenant_id: str, source_id: str) -> schemas.Source:
        with tenant_scope(tenant_id):
            return source_view(await self._source(tenant_id, source_id))

    async def update(self, tenant_id: str, source_id: str, data: schemas.SourceUpdate) -> schemas.Source:
        with tenant_scope(tenant_id):
            source = await self._source(tenant_id, source_id)
            changes: dict[str, object] = {}
            if data.name is not None:
                source.name = changes["name"] = data.name
            if data.allowed_origins is not None:
                _check_origins(source.kind, data.allowed_origins)
                source.allowed_origins = changes["allowed_origins"] = sorted(set(data.allowed_origins))
            self.audit.record(
                "source.updated", tenant_id=tenant_id, target_type="source", target_id=source.id, details=changes
            )
            await self.db.commit()
            return source_view(source)

    async def rotate(self, tenant_id: str, source_id: str, data: schemas.WriteKeyRotate) -> schemas.SourceCreated:
        if data.grace_period_seconds > self.max_grace_seconds:
            raise ValidationFailed(
                f"grace_period_seconds may be at most {self.max_grace_seconds}.", code="grace_period_too_long"
            )
        now = utcnow()
        with tenant_scope(tenant_id):
            source = await self._source(tenant_id, source_id)
            if source.revoked_at is not None:
                raise Conflict("A revoked source's key cannot be rotated; create a new source.", code="source_revoked")
            write_key, visible = new_write_key()
            source.previous_write_key_hash, source.previous_valid_until = previous_after_rotation(
                source.write_key_hash, data.grace_period_seconds, now
            )
            source.write_key_hash = token_hash(write_key)
            source.write_key_prefix = visible
            source.rotated_at = now
            self.audit.record(
                "source.key_rotated",
                tenant_id=tenant_id,
                target_type="source",
                target_id=source.id,
                details={"grace_period_seconds": data.grace_period_seconds},
            )
            await self.db.commit()
            return schemas.SourceCreated(source=source_view(source), write_key=write_key)

    async def revoke(self, tenant_id: str, source_id: str) -> schemas.Source:
        with tenant_scope(tenant_id):
            source = await self._source(tenant_id, source_id)
            if source.revoked_at is None:
                source.revoked_at = utcnow()
                source.previous_valid_until = None
            self.audit.record("source.revoked", tenant_id=tenant_id, target_type="source", target_id=source.id)
            await self.db.commit()
            return source_view(source)
