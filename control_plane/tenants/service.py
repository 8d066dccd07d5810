"""Create, list, change and retire tenants, moving them through their lifecycle."""

from __future__ import annotations

import msgspec
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit.service import AuditService
from control_plane.db.models import Membership, Tenant
from control_plane.identity.service import IdentityService
from control_plane.tenants import schemas
from control_plane.tenants.states import check_transition
from kernel.db import new_id, utcnow
from kernel.errors import Conflict, NotFound, ValidationFailed
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.tenancy import dangerously_unscoped, tenant_scope
from kernel.text import slugify


def tenant_view(tenant: Tenant) -> schemas.Tenant:
    return msgspec.convert(tenant, schemas.Tenant, from_attributes=True)


class TenantService:
    def __init__(self, db: AsyncSession, audit: AuditService, identity: IdentityService) -> None:
        self.db = db
        self.audit = audit
        self.identity = identity

    async def find(self, tenant_id: str) -> Tenant | None:
        return await self.db.get(Tenant, tenant_id)

    async def _tenant(self, tenant_id: str) -> Tenant:
        tenant = await self.find(tenant_id)
        if tenant is None:
            raise NotFound(f"No tenant {tenant_id}.", code="tenant_not_found")
        return tenant

    async def get(self, tenant_id: str) -> schemas.Tenant:
        return tenant_view(await self._tenant(tenant_id))

    async def create(self, data: schemas.TenantCreate, created_by: str | None) -> schemas.Tenant:
        slug = data.slug or slugify(data.name)
        if not slug:
            raise ValidationFailed("Give a slug: none can be derived from this name.", code="slug_required")
        if await self.db.scalar(select(Tenant.id).where(Tenant.slug == slug)):
            raise Conflict(f"The slug {slug!r} is taken; choose another.", code="slug_taken")
        tenant = Tenant(
            id=new_id("ten"),
            name=data.name,
            slug=slug,
            plan=data.plan,
            deployment_pattern=data.deployment_pattern,
            region=data.region,
            template=data.template,
            status="pending",
        )
        with tenant_scope(tenant.id):
            self.db.add(tenant)
            self.audit.record(
                "tenant.created",
                tenant_id=tenant.id,
                target_type="tenant",
                target_id=tenant.id,
                details={"slug": slug, "plan": data.plan, "deployment_pattern": data.deployment_pattern},
            )
            try:
                await self.db.flush()
            except IntegrityError:
                await self.db.rollback()
                raise Conflict(f"The slug {slug!r} is taken; choose another.", code="slug_taken") from None
            # One transaction: if the owner's invitation cannot be mailed, no tenant is left behind.
            if data.owner_email:
                await self.identity.stage_invite(tenant.id, data.owner_email, "owner", created_by)
            await self.db.commit()
        return tenant_view(tenant)

    async def list(
        self,
        *,
        member_id: str | None = None,
        only_id: str | None = None,
        status: str | None = None,
        plan: str | None = None,
        deployment_pattern: str | None = None,
        region: str | None = None,
        q: str | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> schemas.TenantPage:
        """Oldest first. ``member_id`` limits the list to that user's tenants, ``only_id`` to one tenant."""
        query = select(Tenant)
        if only_id is not None:
            query = query.where(Tenant.id == only_id, Tenant.status != "deleted")
        if member_id is not None:
            query = query.join(Membership, Membership.tenant_id == Tenant.id).where(
                Membership.user_id == member_id, Tenant.status != "deleted"
            )
        for column, value in (
            (Tenant.status, status),
            (Tenant.plan, plan),
            (Tenant.deployment_pattern, deployment_pattern),
            (Tenant.region, region),
        ):
            if value is not None:
                query = query.where(column == value)
        if q:
            needle = f"%{q.lower()}%"
            query = query.where(or_(Tenant.name.ilike(needle), Tenant.slug.ilike(needle)))
        query = keyset(query, Tenant.created_at, Tenant.id, cursor, newest_first=False, limit=limit)
        # The membership join spans tenants by design: it is filtered to one user above.
        with dangerously_unscoped():
            rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda t: (t.created_at, t.id))
        return schemas.TenantPage(items=[tenant_view(t) for t in rows], next_cursor=next_cursor)

    async def update(self, tenant_id: str, data: schemas.TenantUpdate) -> schemas.Tenant:
        tenant = await self._tenant(tenant_id)
        if tenant.status in ("deleting", "deleted"):
            raise Conflict(f"A {tenant.status} tenant cannot be changed.", code="tenant_deleted")
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        for field, value in changes.items():
            setattr(tenant, field, value)
        with tenant_scope(tenant.id):
            self.audit.record(
                "tenant.updated", tenant_id=tenant.id, target_type="tenant", target_id=tenant.id, details=changes
            )
            await self.db.commit()
        return tenant_view(tenant)

    async def transition(self, tenant_id: str, *path: str, reason: str | None = None) -> schemas.Tenant:
        """Move the tenant through ``path`` (each step checked), recording each step."""
        tenant = await self._tenant(tenant_id)
        with tenant_scope(tenant.id):
            for target in path:
                check_transition(tenant.status, target)
                before = tenant.status
                tenant.status = target
                tenant.status_reason = reason
                tenant.status_changed_at = utcnow()
                self.audit.record(
                    f"tenant.{target}",
                    tenant_id=tenant.id,
                    target_type="tenant",
                    target_id=tenant.id,
                    details={"from": before, "to": target, **({"reason": reason} if reason else {})},
                )
            await self.db.commit()
        return tenant_view(tenant)

    # NOTE: provisioning, suspension, reactivation and deletion are runs: ProvisioningService.start.
