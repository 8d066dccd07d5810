"""Builds the versioned config a cell pulls: tenants, their limits and their sources' write-key hashes."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db.models import Source, Tenant
from data_plane.contract.schemas import CellConfig, Limits, SourceConfig, TenantConfig, config_digest
from kernel.db import utcnow
from kernel.tenancy import dangerously_unscoped

# Ingestion limits per plan. NOTE: billing will own plans; until then they live here.
PLAN_LIMITS: dict[str, Limits] = {
    "free": Limits(max_batch_events=100, events_per_second=200, burst_events=1_000),
    "growth": Limits(max_batch_events=500, events_per_second=2_000, burst_events=10_000),
    "enterprise": Limits(max_batch_events=2_500, events_per_second=20_000, burst_events=100_000),
}


class CellConfigService:
    def __init__(self, db: AsyncSession) -> None:
        self.db = db

    async def build(self) -> CellConfig:
        """The config of every tenant not yet deleted; revoked sources are left out."""
        now = utcnow()
        # The cell serves all of these tenants: reading across them is the point here.
        with dangerously_unscoped():
            tenants = (
                await self.db.scalars(select(Tenant).where(Tenant.status != "deleted").order_by(Tenant.id))
            ).all()
            sources = (
                await self.db.scalars(select(Source).where(Source.revoked_at.is_(None)).order_by(Source.id))
            ).all()
        by_tenant: dict[str, list[SourceConfig]] = {}
        for source in sources:
            in_grace = source.previous_valid_until is not None and source.previous_valid_until > now
            hashes = [source.write_key_hash]
            if in_grace and source.previous_write_key_hash:
                hashes.append(source.previous_write_key_hash)
            by_tenant.setdefault(source.tenant_id, []).append(
                SourceConfig(
                    id=source.id,
                    kind=source.kind,  # type: ignore[arg-type]
                    write_key_hashes=hashes,
                    allowed_origins=list(source.allowed_origins),
                    previous_write_key_hash=source.previous_write_key_hash if in_grace else None,
                    previous_valid_until=source.previous_valid_until if in_grace else None,
                )
            )
        configs = [
            TenantConfig(
                id=tenant.id,
                status=tenant.status,  # type: ignore[arg-type]
                plan=tenant.plan,
                limits=PLAN_LIMITS.get(tenant.plan, Limits()),
                sources=by_tenant.get(tenant.id, []),
            )
            for tenant in tenants
        ]
        return CellConfig(version=config_digest(configs), generated_at=now, tenants=configs)
