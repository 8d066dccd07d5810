"""The internal endpoint cells pull their config from, and the cells registry for Livora staff."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from control_plane.cells import schemas
from control_plane.cells.service import BUILTIN_CELL_ID
from control_plane.runtime import Services
from data_plane.contract.schemas import CONFIG_PATH, CellConfig
from kernel.pagination import DEFAULT_LIMIT, MAX_LIMIT

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="Page size.")]


class CellConfigController(Controller):
    tags = ["Cells"]

    @get(CONFIG_PATH, operation_id="GetCellConfig", opt={"cell": True}, include_in_schema=True)
    async def get_cell_config(
        self,
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
        if_none_match: Annotated[str | None, HeaderParameter(name="If-None-Match")] = None,
    ) -> Response[CellConfig]:
        """For data-plane cells (their credential, not a user's): their tenants, limits and write-key hashes.

        Each registered cell gets only the tenants placed on it; the built-in cell (the installation's
        cell secret) also gets every tenant placed nowhere yet. A pull counts as the cell's heartbeat.
        Answers 304 when the cell's `If-None-Match` is the current version.
        """
        cell_id = request.scope.get("cell_id", BUILTIN_CELL_ID)  # type: ignore[attr-defined]
        if cell_id != BUILTIN_CELL_ID:
            await services.cell_registry.record_heartbeat(cell_id)
        config = await services.cells.build(cell_id)
        etag = f'"{config.version}"'
        if if_none_match == etag:
            return Response(None, status_code=304, headers={"ETag": etag})  # type: ignore[arg-type]
        return Response(config, headers={"ETag": etag, "Cache-Control": "no-cache"})


class CellController(Controller):
    path = "/api/v1/cells"
    tags = ["Cells"]

    @get("/", operation_id="ListCells", opt={"permission": ("cells", "read")})
    async def list_cells(
        self,
        services: NamedDependency[Services],
        region: FromQuery[str | None] = None,
        pattern: FromQuery[Literal["A", "B"] | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.CellPage:
        """Every cell, oldest first, with its load (tenants placed), capacity and health from its heartbeats."""
        await services.cell_registry.ensure_builtin(services.runtime.settings.builtin_cell_url)
        await services.db.commit()
        return await services.cell_registry.list(region=region, pattern=pattern, cursor=cursor, limit=limit)

    @post("/", operation_id="RegisterCell", opt={"permission": ("cells", "write"), "audit": "cell.registered"})
    async def register_cell(
        self, data: JSONBody[schemas.CellCreate], services: NamedDependency[Services]
    ) -> schemas.CellCreated:
        """Register a pooled (Pattern B) cell. Its credential (the cell's `LIVORA_CELL_SECRET`) is shown only here.

        Pattern A cells are created by their tenant's provisioning run, not here.
        """
        return await services.cell_registry.register(data)

    @get("/{cell_id:str}", operation_id="GetCell", opt={"permission": ("cells", "read")})
    async def get_cell(self, cell_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Cell:
        """One cell, with its stack outputs when the AWS driver deployed one."""
        return await services.cell_registry.get(cell_id)

    @patch("/{cell_id:str}", operation_id="UpdateCell", opt={"permission": ("cells", "write"), "audit": "cell.updated"})
    async def update_cell(
        self, cell_id: FromPath[str], data: JSONBody[schemas.CellUpdate], services: NamedDependency[Services]
    ) -> schemas.Cell:
        """Change a cell's endpoint, capacity or status (`draining` takes no new tenants)."""
        return await services.cell_registry.update(cell_id, data)

    @post(
        "/{cell_id:str}/rotate-credential",
        operation_id="RotateCellCredential",
        status_code=200,
        opt={"permission": ("cells", "write"), "audit": "cell.credential_rotated"},
    )
    async def rotate_cell_credential(
        self,
        cell_id: FromPath[str],
        services: NamedDependency[Services],
        data: JSONBody[schemas.CredentialRotation | None] = None,
    ) -> schemas.CellCreated:
        """A new credential for the cell, shown only here; the old one works for the grace period."""
        grace = data.grace_period_seconds if data else schemas.CredentialRotation().grace_period_seconds
        return await services.cell_registry.rotate_credential(cell_id, grace)
