"""The API keys a cell accepts for its read APIs: active keys with an analytics scope, as hashes."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db.models import ApiKey
from data_plane.contract.schemas import ApiKeyGrant
from kernel.tenancy import dangerously_unscoped

# Scopes a cell honours; keys without one are never sent to a cell.
CELL_SCOPES = ("analytics:read",)


async def analytics_grants(db: AsyncSession, tenant_ids: list[str], now: dt.datetime) -> dict[str, list[ApiKeyGrant]]:
    """Per tenant, its usable keys that carry a cell scope (revoked and expired keys are left out)."""
    if not tenant_ids:
        return {}
    # The config covers every tenant of the cell: reading across them is the point here.
    with dangerously_unscoped():
        keys = (
            await db.scalars(
                select(ApiKey).where(ApiKey.tenant_id.in_(tenant_ids), ApiKey.revoked_at.is_(None)).order_by(ApiKey.id)
            )
        ).all()
    grants: dict[str, list[ApiKeyGrant]] = {}
    for key in keys:
        scopes = sorted(scope for scope in key.scopes if scope in CELL_SCOPES)
        if not scopes or (key.expires_at is not None and key.expires_at <= now):
            continue
        in_grace = key.previous_valid_until is not None and key.previous_valid_until > now
        hashes = [key.secret_hash]
        if in_grace and key.previous_secret_hash:
            hashes.append(key.previous_secret_hash)
        grants.setdefault(key.tenant_id, []).append(
            ApiKeyGrant(
                id=key.id,
                secret_hashes=hashes,
                scopes=scopes,
                expires_at=key.expires_at,
                previous_secret_hash=key.previous_secret_hash if in_grace else None,
                previous_valid_until=key.previous_valid_until if in_grace else None,
            )
        )
    return grants
