"""The local driver: a tenant's space in a cell (profiles, lake prefix, stream registration) via the cell contract."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from data_plane.contract.schemas import SpaceSpec
from data_plane.contract.spaces import CellSpaces
from provisioning.runner import StepContext, StepHandler
from tenant_templates import Catalog

# The cell that holds the tenant's space, or None when the tenant was never given one.
SpacesResolver = Callable[[StepContext], Awaitable[CellSpaces | None]]


class LocalDriver:
    name = "local"

    def __init__(self, resolve: SpacesResolver, catalog: Catalog) -> None:
        self.resolve = resolve
        self.catalog = catalog

    async def create_space(self, context: StepContext) -> dict[str, Any]:
        """Create (or find, on a repeat) the space the template describes; an upgrade re-registers it."""
        spaces = await self.resolve(context)
        if spaces is None:
            raise RuntimeError("the tenant has no cell: place it first")
        template = self.catalog.get(context.template, context.template_version)
        space = await spaces.create(
            SpaceSpec(
                tenant_id=context.tenant_id,
                stream_partitions=template.resources.stream_partitions,
                lake_retention_days=template.resources.lake_retention_days,
                stores=list(template.resources.stores),
            )
        )
        return msgspec.to_builtins(space)  # type: ignore[no-any-return]

    async def check_space(self, context: StepContext) -> dict[str, Any]:
        """Before a tenant resumes: its space is there (re-created if the cell lost it)."""
        if await self.resolve(context) is None:
            return {"skipped": "the tenant was never given a space"}
        return await self.create_space(context)

    async def export_space(self, context: StepContext) -> dict[str, Any]:
        """Archive the tenant's lake objects and profiles before anything is deleted; the run id labels the archive."""
        spaces = await self.resolve(context)
        if spaces is None:
            return {"skipped": "the tenant never had a space"}
        export = await spaces.export(context.tenant_id, context.run_id)
        return msgspec.to_builtins(export)  # type: ignore[no-any-return]

    async def remove_space(self, context: StepContext) -> dict[str, Any]:
        spaces = await self.resolve(context)
        if spaces is None:
            return {"skipped": "the tenant never had a space"}
        removal = await spaces.remove(context.tenant_id)
        return msgspec.to_builtins(removal)  # type: ignore[no-any-return]

    def handlers(self) -> dict[str, StepHandler]:
        return {
            "create_space": self.create_space,
            "check_space": self.check_space,
            "export_space": self.export_space,
            "remove_space": self.remove_space,
        }
