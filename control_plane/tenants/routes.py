"""Tenant endpoints."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from control_plane.identity.principal import Principal
from control_plane.rbac.authorizer import PLATFORM
from control_plane.runtime import Services
from control_plane.tenants import schemas
from kernel.pagination import DEFAULT_LIMIT, MAX_LIMIT

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="Page size.")]


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
        """Create a tenant in state `pending`. With `owner_email`, that person is invited as its owner."""
        return await services.tenants.create(data, principal.id)

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
    async def provision_tenant(self, tenant_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Tenant:
        """Provision a `pending` tenant: `pending → provisioning → active`."""
        return await services.tenants.provision(tenant_id)

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
        """Suspend an `active` tenant: its users and API keys are refused (403) until it is reactivated."""
        return await services.tenants.suspend(tenant_id, data.reason if data else None)

    @post(
        "/{tenant_id:str}/reactivate",
        operation_id="ReactivateTenant",
        status_code=200,
        opt={"permission": ("tenant", "write"), "audit": "tenant.reactivated"},
    )
    async def reactivate_tenant(self, tenant_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Tenant:
        """Reactivate a `suspended` tenant."""
        return await services.tenants.reactivate(tenant_id)

    @delete(
        "/{tenant_id:str}",
        operation_id="DeleteTenant",
        status_code=200,
        opt={"permission": ("tenant", "write"), "audit": "tenant.deleted"},
    )
    async def delete_tenant(self, tenant_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Tenant:
        """Delete a `suspended` (or never provisioned `pending`) tenant: `deleting → deleted`.

        Its members lose access and its API keys stop working; the audit trail is kept.
        """
        return await services.tenants.delete(tenant_id)
