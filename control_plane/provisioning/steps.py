"""The control plane's own provisioning steps: placement, the default source, starter content, tenant states.

Each looks for what it would create before creating it, so a run resumed after a crash repeats
nothing: a second ``create_source`` finds the default source, a second ``activate`` finds the
tenant active.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.cells.models import Cell, TenantPlacement
from control_plane.db.models import Source, Tenant
from control_plane.sources.schemas import SourceCreate
from kernel.db import utcnow
from provisioning.models import ProvisioningRun
from provisioning.runner import StepContext, StepHandler
from tenant_templates import Catalog
from tenant_templates.catalog import to_builtins

if TYPE_CHECKING:
    from control_plane.runtime import Services

DEFAULT_SOURCE = "Default"


class ControlPlaneSteps:
    def __init__(self, services: Callable[[AsyncSession], Services], catalog: Catalog, builtin_endpoint: str) -> None:
        self.services = services
        self.catalog = catalog
        self.builtin_endpoint = builtin_endpoint

    @staticmethod
    def _db(context: StepContext) -> AsyncSession:
        assert context.db is not None
        return context.db

    async def _tenant(self, context: StepContext) -> Tenant:
        tenant = await self._db(context).get(Tenant, context.tenant_id)
        if tenant is None:
            raise RuntimeError(f"tenant {context.tenant_id} is gone")
        return tenant

    async def _placement(self, context: StepContext) -> TenantPlacement | None:
        return await self._db(context).get(TenantPlacement, context.tenant_id)

    async def _move(self, context: StepContext, target: str, *, reason: str | None = None) -> dict[str, Any]:
        tenant = await self._tenant(context)
        if tenant.status == target:
            return {"status": target, "already": True}
        await self.services(self._db(context)).tenants.transition(context.tenant_id, target, reason=reason)
        return {"status": target}

    # --- provision -----------------------------------------------------------------------

    async def place_cell(self, context: StepContext) -> dict[str, Any]:
        """Pattern B: the least-loaded healthy pooled cell of the region; Pattern A: the tenant's own cell."""
        db = self._db(context)
        tenant = await self._tenant(context)
        placement = await self._placement(context)
        if placement is None:
            raise RuntimeError("the tenant has no placement record")
        if placement.cell_id is None:
            cells = self.services(db).cell_registry
            if tenant.deployment_pattern == "A":
                cell = await cells.dedicated(tenant.id, tenant.region)
            else:
                cell = await cells.place_pooled(tenant.region, self.builtin_endpoint)
            placement.cell_id = cell.id
            await db.commit()
        cell = await db.get(Cell, placement.cell_id)
        assert cell is not None
        return {"cell_id": cell.id, "cell_name": cell.name, "pattern": cell.pattern, "region": cell.region}

    async def create_source(self, context: StepContext) -> dict[str, Any]:
        """A server-side default source; its write key is not kept: rotate the source to get one."""
        db = self._db(context)
        existing = await db.scalar(
            select(Source).where(
                Source.tenant_id == context.tenant_id, Source.name == DEFAULT_SOURCE, Source.revoked_at.is_(None)
            )
        )
        if existing is not None:
            return {"source_id": existing.id, "write_key_prefix": existing.write_key_prefix, "created": False}
        created = await self.services(db).sources.create(
            context.tenant_id, SourceCreate(name=DEFAULT_SOURCE, kind="server"), None
        )
        return {"source_id": created.source.id, "write_key_prefix": created.source.write_key_prefix, "created": True}

    async def store_starter_content(self, context: StepContext) -> dict[str, Any]:
        db = self._db(context)
        template = self.catalog.get(context.template, context.template_version)
        placement = await self._placement(context)
        assert placement is not None
        starter = to_builtins(template)["starter"]
        placement.starter_content = starter
        placement.resources = {**placement.resources, **{k: v for k, v in context.outputs.items() if k in _KEPT}}
        await db.commit()
        return {section: len(items) for section, items in starter.items()}

    async def record_outputs(self, context: StepContext) -> dict[str, Any]:
        """Keep the stack's outputs on the tenant's cell (bucket, stream, roles, and for Pattern A its compute)."""
        db = self._db(context)
        stack = context.outputs.get("deploy_stack", {})
        placement = await self._placement(context)
        cell = await db.get(Cell, placement.cell_id) if placement and placement.cell_id else None
        if cell is None:
            raise RuntimeError("the tenant has no cell to record the stack on")
        recorded = {**stack.get("outputs", {}), "StackName": stack.get("stack_name"), "StackId": stack.get("stack_id")}
        if cell.pattern == "A":
            cell.outputs = recorded
        else:
            # A pooled cell holds many tenants' stacks: keep each under its tenant.
            cell.outputs = {**cell.outputs, context.tenant_id: recorded}
        await db.commit()
        return {"cell_id": cell.id, "outputs": sorted(recorded)}

    async def clear_starter_content(self, context: StepContext) -> dict[str, Any]:
        placement = await self._placement(context)
        if placement is not None:
            placement.starter_content = {}
            await self._db(context).commit()
        return {}

    async def activate(self, context: StepContext) -> dict[str, Any]:
        return await self._move(context, "active")

    async def record_template(self, context: StepContext) -> dict[str, Any]:
        db = self._db(context)
        tenant = await self._tenant(context)
        placement = await self._placement(context)
        assert placement is not None
        tenant.template = context.template
        placement.template, placement.template_version = context.template, context.template_version
        await db.commit()
        return {"template": context.template, "version": context.template_version}

    # --- suspend, resume, deprovision -------------------------------------------------------

    async def suspend_tenant(self, context: StepContext) -> dict[str, Any]:
        return await self._move(context, "suspended", reason=context.params.get("reason"))

    async def resume_tenant(self, context: StepContext) -> dict[str, Any]:
        return await self._move(context, "active")

    async def begin_deletion(self, context: StepContext) -> dict[str, Any]:
        tenant = await self._tenant(context)
        if tenant.status in ("deleting", "deleted"):
            return {"status": tenant.status, "already": True}
        return await self._move(context, "deleting", reason=context.params.get("reason"))

    async def revoke_sources(self, context: StepContext) -> dict[str, Any]:
        db = self._db(context)
        result = await db.execute(
            update(Source)
            .where(Source.tenant_id == context.tenant_id, Source.revoked_at.is_(None))
            .values(revoked_at=utcnow(), previous_valid_until=None)
            .execution_options(synchronize_session=False)
        )
        await db.commit()
        return {"revoked": int(result.rowcount or 0)}  # type: ignore[attr-defined]

    async def release_cell(self, context: StepContext) -> dict[str, Any]:
        db = self._db(context)
        placement = await self._placement(context)
        if placement is None or placement.cell_id is None:
            return {"released": None}
        cell = await db.get(Cell, placement.cell_id)
        export = context.outputs.get("export_space", {})
        stack = context.outputs.get("delete_stack", {})
        locations = [where for where in (export.get("location"), stack.get("archive_location")) if where]
        if locations:
            placement.archive_location = " ".join(locations)
        released = placement.cell_id
        placement.cell_id = None
        if cell is not None and cell.dedicated_tenant_id == context.tenant_id:
            cell.status = "retired"
        await db.commit()
        return {"released": released, "archive_location": placement.archive_location}

    async def finish_deletion(self, context: StepContext) -> dict[str, Any]:
        return await self._move(context, "deleted")

    # --- rollback ---------------------------------------------------------------------------

    async def reset_tenant(self, context: StepContext) -> dict[str, Any]:
        """After a rollback: the tenant is ``pending`` again and the failed run is marked rolled back."""
        db = self._db(context)
        if context.params.get("rolls_back"):
            await db.execute(
                update(ProvisioningRun)
                .where(ProvisioningRun.id == context.params["rolls_back"], ProvisioningRun.status == "failed")
                .values(status="rolled_back")
                .execution_options(synchronize_session=False)
            )
            await db.commit()
        tenant = await self._tenant(context)
        if tenant.status == "failed":
            return await self._move(context, "pending", reason="provisioning rolled back")
        return {"status": tenant.status}

    def handlers(self) -> dict[str, StepHandler]:
        return {
            "place_cell": self.place_cell,
            "create_source": self.create_source,
            "store_starter_content": self.store_starter_content,
            "clear_starter_content": self.clear_starter_content,
            "record_outputs": self.record_outputs,
            "activate": self.activate,
            "record_template": self.record_template,
            "suspend_tenant": self.suspend_tenant,
            "resume_tenant": self.resume_tenant,
            "begin_deletion": self.begin_deletion,
            "revoke_sources": self.revoke_sources,
            "release_cell": self.release_cell,
            "finish_deletion": self.finish_deletion,
            "reset_tenant": self.reset_tenant,
        }


# Step outputs worth keeping on the placement: where the tenant's resources are.
_KEPT = ("place_cell", "create_space", "deploy_stack", "create_source", "verify_role")
