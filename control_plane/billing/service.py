"""Binds billing to the control plane: tenants, memberships (seats), the audit log and mail."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing.catalog import Catalog, default_catalog, load_catalog
from billing.service import BillingConfig, BillingService, TenantInfo
from control_plane.audit.service import AuditService
from control_plane.db.models import Membership, Tenant, User
from control_plane.settings import Settings
from kernel.ports.mail import Mailer, MailMessage
from kernel.tenancy import dangerously_unscoped, tenant_scope

OWNER_ROLES = ("owner", "admin")


@cache
def catalog_for(path: str) -> Catalog:
    """The built-in catalog, or the file the settings name (read once per process)."""
    return load_catalog(Path(path)) if path else default_catalog()


def billing_config(settings: Settings) -> BillingConfig:
    return BillingConfig(
        grace_seconds=settings.billing_grace_seconds,
        invoice_prefix=settings.billing_invoice_prefix,
        credit_note_prefix=settings.billing_credit_note_prefix,
    )


def _info(tenant: Tenant) -> TenantInfo:
    return TenantInfo(tenant.id, tenant.name, tenant.plan, tenant.status, tenant.created_at)


class ControlPlaneDirectory:
    """Billing's view of the platform, over the same DB session (one unit of work)."""

    def __init__(self, db: AsyncSession, audit: AuditService, mailer: Mailer) -> None:
        self.db = db
        self._audit = audit
        self.mailer = mailer

    async def tenant(self, tenant_id: str) -> TenantInfo | None:
        tenant = await self.db.get(Tenant, tenant_id)
        return _info(tenant) if tenant is not None else None

    async def tenants(self) -> list[TenantInfo]:
        """Every tenant that may owe something: all but those that never went live."""
        rows = await self.db.scalars(
            select(Tenant).where(Tenant.status.in_(("active", "suspended", "deleting", "deleted"))).order_by(Tenant.id)
        )
        return [_info(t) for t in rows]

    async def seats(self, tenant_id: str) -> int:
        with tenant_scope(tenant_id):
            return int(
                await self.db.scalar(
                    select(func.count()).select_from(Membership).where(Membership.tenant_id == tenant_id)
                )
                or 0
            )

    async def set_plan(self, tenant_id: str, plan: str) -> None:
        await self.db.execute(update(Tenant).where(Tenant.id == tenant_id).values(plan=plan))

    def audit(
        self, action: str, *, tenant_id: str | None, target_type: str, target_id: str, details: dict[str, Any]
    ) -> None:
        with dangerously_unscoped():
            self._audit.record(
                action, tenant_id=tenant_id, target_type=target_type, target_id=target_id, details=details
            )

    async def notify_owners(self, tenant_id: str, subject: str, text: str) -> None:
        with tenant_scope(tenant_id):
            emails = (
                await self.db.scalars(
                    select(User.email)
                    .join(Membership, Membership.user_id == User.id)
                    .where(Membership.tenant_id == tenant_id, Membership.role.in_(OWNER_ROLES), User.is_active)
                    .order_by(User.email)
                )
            ).all()
        for email in emails:
            await self.mailer.send(MailMessage(to=email, subject=subject, text=text))


def build_billing(db: AsyncSession, audit: AuditService, runtime: Any) -> BillingService:
    return BillingService(
        db,
        ControlPlaneDirectory(db, audit, runtime.mailer),
        runtime.payments,
        billing_config(runtime.settings),
        catalog_for(runtime.settings.billing_catalog_path),
    )
