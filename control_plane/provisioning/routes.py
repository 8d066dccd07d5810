"""Provisioning runs: list and inspect them step by step, retry or roll back a failed one."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from control_plane.identity.principal import Principal
from control_plane.provisioning import schemas
from control_plane.runtime import Services
from kernel.pagination import DEFAULT_LIMIT, MAX_LIMIT

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="Page size.")]


class ProvisioningRunController(Controller):
    path = "/api/v1/provisioning/runs"
    tags = ["Provisioning"]

    @get("/", operation_id="ListProvisioningRuns", opt={"permission": ("provisioning", "read")})
    async def list_runs(
        self,
        services: NamedDependency[Services],
        tenant_id: FromQuery[str | None] = None,
        status: FromQuery[schemas.RunStatus | None] = None,
        operation: FromQuery[schemas.Operation | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.RunPage:
        """Runs of every tenant, newest first, each with its steps (status, attempts, error, outputs)."""
        return await services.provisioning.list_runs(
            tenant_id=tenant_id, status=status, operation=operation, cursor=cursor, limit=limit
        )

    @get("/{run_id:str}", operation_id="GetProvisioningRun", opt={"permission": ("provisioning", "read")})
    async def get_run(self, run_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Run:
        """One run, step by step."""
        return await services.provisioning.get_run(run_id)

    @post(
        "/{run_id:str}/retry",
        operation_id="RetryProvisioningRun",
        status_code=200,
        opt={"permission": ("provisioning", "write"), "audit": "provisioning.retried"},
    )
    async def retry_run(self, run_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Run:
        """Go on with a `failed` run from its failed step, with fresh attempts (every step is idempotent)."""
        return await services.provisioning.retry(run_id)

    @post(
        "/{run_id:str}/rollback",
        operation_id="RollBackProvisioningRun",
        status_code=200,
        opt={"permission": ("provisioning", "write"), "audit": "provisioning.rollback_started"},
    )
    async def roll_back_run(
        self, run_id: FromPath[str], services: NamedDependency[Services], principal: NamedDependency[Principal]
    ) -> schemas.Run:
        """Undo what a failed provisioning run created, newest first, as a new `rollback` run.

        The tenant goes back to `pending`; the failed run becomes `rolled_back`.
        """
        return await services.provisioning.rollback(run_id, principal.id)


class TenantProvisioningController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}"
    tags = ["Provisioning"]

    @get("/provisioning-runs", operation_id="ListTenantProvisioningRuns", opt={"permission": ("provisioning", "read")})
    async def list_tenant_runs(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.RunPage:
        """This tenant's runs, newest first."""
        return await services.provisioning.list_runs(tenant_id=tenant_id, cursor=cursor, limit=limit)

    @post(
        "/upgrade",
        operation_id="UpgradeTenantTemplate",
        status_code=200,
        opt={"permission": ("tenant", "write"), "audit": "provisioning.upgrade_started"},
    )
    async def upgrade_tenant(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        data: JSONBody[schemas.UpgradeRequest | None] = None,
    ) -> schemas.Run:
        """Move an `active` tenant to a newer template version (or another template) as a run.

        Its space is re-registered with the new resources and its starter content replaced.
        """
        request = data or schemas.UpgradeRequest()
        return await services.provisioning.start(
            tenant_id, "upgrade", created_by=principal.id, template=request.template, version=request.version
        )

    @get("/placement", operation_id="GetTenantPlacement", opt={"permission": ("provisioning", "read")})
    async def get_placement(self, tenant_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Placement:
        """Where the tenant lives (its cell), its template version, its resources and its starter content."""
        return await services.provisioning.placement(tenant_id)

    @get("/trust-policy", operation_id="GetTrustPolicy", opt={"permission": ("trust_policy", "read")})
    async def get_trust_policy(
        self, tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.TrustPolicy:
        """Pattern A: the role to create in your AWS account, with this tenant's ExternalId, for Livora to assume.

        For the tenant's owners and admins (who create the role) and Livora staff.
        """
        return await services.provisioning.trust_policy(tenant_id)
