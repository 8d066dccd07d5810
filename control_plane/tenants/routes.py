"""Tenant endpoints."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from control_plane.identity.principal import Principal
from control_plane.provisioning.schemas import ProvisionRequest
from control_plane.rbac.authorizer import PLATFORM
from control_plane.runtime import Services
from control_plane.tenants import schemas
from kernel.pagination import DEFAULT_LIMIT, MAX_LIMIT

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="Page size.")]


async def _fresh(services: Services, tenant_id: str) -> schemas.Tenant:
    """The tenant as it is now (a run may have moved it in another session)."""
    services.db.expire_all()
    return await services.tenants.get(tenant_id)


class TenantController(Controller):
    path = "/api/v1/tenants"
    tags = ["Tenants"]

    @post("/", operation_id="CreateTenant", opt={"permission": ("tenant", "write"), "audit": "tenant.created"})
    async def create_tenant(
        self,
        data: JSONBody[schemas.TenantCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> schemas.Tenant:
        """Create a tenant and start its provisioning run: `pending → provisioning → active`, or `failed` (with why).

        With `owner_email`, that person is invited as its owner. With `provision: false` it stays `pending`
        until ProvisionTenant. Follow the run with ListTenantProvisioningRuns.
        """
        tenant = await services.tenants.create(data, principal.id)
        if not data.provision:
            return tenant
        params = {"role_arn": data.role_arn} if data.role_arn else None
        await services.provisioning.start(tenant.id, "provision", created_by=principal.id, params=params, wait=False)
        return await _fresh(services, tenant.id)

    @get("/", operation_id="ListTenants", opt={"authenticated": True})
    async def list_tenants(
        self,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        status: FromQuery[schemas.TenantStatus | None] = None,
        plan: FromQuery[schemas.Plan | None] = None,
        deployment_pattern: FromQuery[schemas.Pattern | None] = None,
        region: FromQuery[str | None] = None,
        q: Annotated[str | None, QueryParameter(description="Part of the name or slug.", max_length=200)] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.TenantPage:
        """List tenants, oldest first. Livora staff see every tenant; others see the tenants they belong to."""
        filters = dict(status=status, plan=plan, deployment_pattern=deployment_pattern, region=region, q=q)
        authorizer = services.runtime.authorizer
        if principal.kind == "api_key":
            return await services.tenants.list(**filters, only_id=principal.tenant_id, cursor=cursor, limit=limit)
        if authorizer.allows(principal, PLATFORM, "tenant", "read"):
            return await services.tenants.list(**filters, cursor=cursor, limit=limit)
        return await services.tenants.list(**filters, member_id=principal.id, cursor=cursor, limit=limit)

    @get("/{tenant_id:str}", operation_id="GetTenant", opt={"permission": ("tenant", "read")})
    async def get_tenant(self, tenant_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Tenant:
        """One tenant."""
        return await services.tenants.get(tenant_id)

    @patch(
        "/{tenant_id:str}",
        operation_id="UpdateTenant",
        opt={"permission": ("tenant", "write"), "audit": "tenant.updated"},
    )
    async def update_tenant(
        self, tenant_id: FromPath[str], data: JSONBody[schemas.TenantUpdate], services: NamedDependency[Services]
    ) -> schemas.Tenant:
        """Change a tenant's name, plan or template. Region and deployment pattern are fixed at creation."""
        return await services.tenants.update(tenant_id, data)

    @post(
        "/{tenant_id:str}/provision",
        operation_id="ProvisionTenant",
        status_code=200,
        opt={"permission": ("tenant", "write"), "audit": "tenant.provisioned"},
    )
    async def provision_tenant(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        data: JSONBody[ProvisionRequest | None] = None,
    ) -> schemas.Tenant:
        """Provision a `pending` (or `failed`) tenant as a run: `provisioning → active`, or `failed` with the reason.

        Answers when the run ends, or after a few seconds with the tenant still `provisioning`.
        """
        params = {"role_arn": data.role_arn} if data and data.role_arn else None
        await services.provisioning.start(tenant_id, "provision", created_by=principal.id, params=params)
        return await _fresh(services, tenant_id)

    @post(
        "/{tenant_id:str}/suspend",
        operation_id="SuspendTenant",
        status_code=200,
        opt={"permission": ("tenant", "write"), "audit": "tenant.suspended"},
    )
    async def suspend_tenant(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        data: JSONBody[schemas.TenantStatusChange | None] = None,
    ) -> schemas.Tenant:
        """Suspend an `active` tenant (a run): its users and API keys are refused (403) until it is reactivated."""
        params = {"reason": data.reason} if data and data.reason else None
        await services.provisioning.start(tenant_id, "suspend", params=params)
        return await _fresh(services, tenant_id)

    @post(
        "/{tenant_id:str}/reactivate",
        operation_id="ReactivateTenant",
        status_code=200,
        opt={"permission": ("tenant", "write"), "audit": "tenant.reactivated"},
    )
    async def reactivate_tenant(self, tenant_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Tenant:
        """Reactivate a `suspended` tenant (a run that first checks its space in the cell)."""
        await services.provisioning.start(tenant_id, "resume")
        return await _fresh(services, tenant_id)

    @delete(
        "/{tenant_id:str}",
        operation_id="DeleteTenant",
        status_code=200,
        opt={"permission": ("tenant", "write"), "audit": "tenant.deleted"},
    )
    async def delete_tenant(self, tenant_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Tenant:
        """Delete a `suspended` (or never provisioned `pending` or `failed`) tenant as a run: `deleting → deleted`.

        The run exports its data (lake and profiles) to an archive, records where, then removes its space
        and its sources. Its members lose access and its API keys stop working; the audit trail is kept.
        """
        await services.provisioning.start(tenant_id, "deprovision")
        return await _fresh(services, tenant_id)
