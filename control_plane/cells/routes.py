"""The internal endpoint cells pull their config from."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import HeaderParameter

from control_plane.runtime import Services
from data_plane.contract.schemas import CONFIG_PATH, CellConfig


class CellConfigController(Controller):
    tags = ["Cells"]

    @get(CONFIG_PATH, operation_id="GetCellConfig", opt={"cell": True}, include_in_schema=True)
    async def get_cell_config(
        self,
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
        if_none_match: Annotated[str | None, HeaderParameter(name="If-None-Match")] = None,
    ) -> Response[CellConfig]:
        """For data-plane cells (their credential, not a user's): tenants, limits and write-key hashes.

        Answers 304 when the cell's `If-None-Match` is the current version.
        """
        config = await services.cells.build()
        etag = f'"{config.version}"'
        if if_none_match == etag:
            return Response(None, status_code=304, headers={"ETag": etag})  # type: ignore[arg-type]
        return Response(config, headers={"ETag": etag, "Cache-Control": "no-cache"})
