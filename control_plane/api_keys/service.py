"""Issue, rotate, revoke and authenticate API keys."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.api_keys import schemas
from control_plane.audit.service import AuditService
from control_plane.db.models import ApiKey, Tenant
from control_plane.identity.principal import Principal
from control_plane.identity.secrets import previous_after_rotation, still_valid, token_hash
from kernel.db import new_id, utcnow
from kernel.errors import Conflict, NotFound, ValidationFailed
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.tenancy import dangerously_unscoped, tenant_scope

KEY_PREFIX = "lvk"
# last_used_at is written at most this often per key, to keep writes off the hot path.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


def new_secret() -> tuple[str, str]:
    """``(secret, visible_prefix)``, e.g. ``lvk_3kq9xj2m_<43 random chars>`` and ``lvk_3kq9xj2m``."""
    visible = f"{KEY_PREFIX}_{secrets.token_hex(4)}"
    return f"{visible}_{secrets.token_urlsafe(32)}", visible


def key_view(key: ApiKey, now: dt.datetime | None = None) -> schemas.ApiKey:
    now = now or utcnow()
    if key.revoked_at is not None:
        status = "revoked"
    elif key.expires_at is not None and key.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return schemas.ApiKey(
        id=key.id,
        tenant_id=key.tenant_id,
        name=key.name,
        prefix=key.prefix,
        scopes=list(key.scopes),
        status=status,
        created_at=key.created_at,
        expires_at=key.expires_at,
        rotated_at=key.rotated_at,
        previous_valid_until=key.previous_valid_until,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )


class ApiKeyService:
    def __init__(self, db: AsyncSession, audit: AuditService, max_grace_seconds: int) -> None:
        self.db = db
        self.audit = audit
        self.max_grace_seconds = max_grace_seconds

    async def _key(self, tenant_id: str, key_id: str) -> ApiKey:
        key = await self.db.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id))
        if key is None:
            raise NotFound(f"No API key {key_id}.", code="api_key_not_found")
        return key

    async def create(self, tenant_id: str, data: schemas.ApiKeyCreate, created_by: str | None) -> schemas.ApiKeyCreated:
        now = utcnow()
        if data.expires_at is not None and data.expires_at.astimezone(dt.UTC) <= now:
            raise ValidationFailed("expires_at must be in the future.", code="expiry_in_past")
        secret, visible = new_secret()
        key = ApiKey(
            id=new_id("key"),
            tenant_id=tenant_id,
            name=data.name,
            prefix=visible,
            secret_hash=token_hash(secret),
            scopes=sorted(set(data.scopes)),
            expires_at=data.expires_at.astimezone(dt.UTC) if data.expires_at else None,
            created_by=created_by,
            created_at=now,
        )
        with tenant_scope(tenant_id):
            self.db.add(key)
            self.audit.record(
                "api_key.created",
                tenant_id=tenant_id,
                target_type="api_key",
                target_id=key.id,
                details={"name": key.name, "scopes": key.scopes},
            )
            await self.db.commit()
        return schemas.ApiKeyCreated(api_key=key_view(key, now), secret=secret)

    async def list(
        self, tenant_id: str, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> schemas.ApiKeyPage:
        query = keyset(
            select(ApiKey).where(ApiKey.tenant_id == tenant_id),
            ApiKey.created_at,
            ApiKey.id,
            cursor,
            newest_first=True,
            limit=limit,
        )
        with tenant_scope(tenant_id):
            rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda k: (k.created_at, k.id))
        now = utcnow()
        return schemas.ApiKeyPage(items=[key_view(k, now) for k in rows], next_cursor=next_cursor)

    async def get(self, tenant_id: str, key_id: str) -> schemas.ApiKey:
        with tenant_scope(tenant_id):
            return key_view(await self._key(tenant_id, key_id))

    async def revoke(self, tenant_id: str, key_id: str) -> schemas.ApiKey:
        with tenant_scope(tenant_id):
            key = await self._key(tenant_id, key_id)
            if key.revoked_at is None:
                key.revoked_at = utcnow()
                key.previous_valid_until = None
            self.audit.record("api_key.revoked", tenant_id=tenant_id, target_type="api_key", target_id=key.id)
            await self.db.commit()
        return key_view(key)

    async def rotate(self, tenant_id: str, key_id: str, data: schemas.ApiKeyRotate) -> schemas.ApiKeyCreated:
        if data.grace_period_seconds > self.max_grace_seconds:
            raise ValidationFailed(
                f"grace_period_seconds may be at most {self.max_grace_seconds}.", code="grace_period_too_long"
            )
        now = utcnow()
        with tenant_scope(tenant_id):
            key = await self._key(tenant_id, key_id)
            if key.revoked_at is not None:
                raise Conflict("A revoked key cannot be rotated; create a new key.", code="api_key_revoked")
            secret, visible = new_secret()
            key.previous_secret_hash, key.previous_valid_until = previous_after_rotation(
                key.secret_hash, data.grace_period_seconds, now
            )
            key.secret_hash = token_hash(secret)
            key.prefix = visible
            key.rotated_at = now
            self.audit.record(
                "api_key.rotated",
                tenant_id=tenant_id,
                target_type="api_key",
                target_id=key.id,
                details={"grace_period_seconds": data.grace_period_seconds},
            )
            await self.db.commit()
        return schemas.ApiKeyCreated(api_key=key_view(key, now), secret=secret)

    async def authenticate(self, secret: str) -> Principal | None:
        """The key behind ``secret``: None when unknown, revoked, expired, or a rotated-out secret past its grace."""
        digest = token_hash(secret)
        now = utcnow()
        # The secret is the credential; its tenant is learnt from the row.
        with dangerously_unscoped():
            key = await self.db.scalar(
                select(ApiKey)
                .join(Tenant, Tenant.id == ApiKey.tenant_id)
                .where(or_(ApiKey.secret_hash == digest, ApiKey.previous_secret_hash == digest))
                # A deleted tenant's keys stop working everywhere, not only on its routes.
                .where(Tenant.status.not_in(("deleting", "deleted")))
            )
            if key is None or key.revoked_at is not None:
                return None
            if key.expires_at is not None and key.expires_at <= now:
                return None
            if not still_valid(key.secret_hash, key.previous_valid_until, digest, now):
                return None
            if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
                await self.db.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
                await self.db.commit()
        return Principal(kind="api_key", id=key.id, label=key.prefix, tenant_id=key.tenant_id, scopes=tuple(key.scopes))
