"""The tenant-space part of the cell contract: a port and its HTTP client (the cell serves ``SPACES_PATH``)."""

from __future__ import annotations

from typing import Protocol

import httpx
import msgspec

from data_plane.contract.schemas import SPACES_PATH, Space, SpaceExport, SpaceExportRequest, SpaceRemoval, SpaceSpec
from kernel.errors import Unavailable, ValidationFailed


class CellSpaces(Protocol):
    """What provisioning asks of a cell; every call is idempotent."""

    async def create(self, spec: SpaceSpec) -> Space:
        """Create (or find) the tenant's space: profiles store, lake prefix, stream registration."""
        ...

    async def export(self, tenant_id: str, label: str) -> SpaceExport:
        """Copy the tenant's lake objects and profiles to the cell's archive area under ``label``."""
        ...

    async def remove(self, tenant_id: str) -> SpaceRemoval:
        """Delete exactly the tenant's space; a space already gone is not an error."""
        ...

    async def close(self) -> None: ...


class HttpCellSpaces:
    """Calls a remote cell with the installation's cell credential."""

    def __init__(self, cell_url: str, credential: str, *, timeout: float = 30.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=cell_url.rstrip("/"), headers={"Authorization": f"Bearer {credential}"}, timeout=timeout
        )

    async def _call(self, method: str, path: str, body: bytes | None, kind: type[msgspec.Struct]) -> msgspec.Struct:
        try:
            response = await self._client.request(
                method, path, content=body, headers={"Content-Type": "application/json"} if body else None
            )
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"the cell at {self._client.base_url} is unreachable: {exc}", code="cell_unavailable"
            ) from None
        if response.status_code >= 500 or response.status_code in (401, 403):
            raise Unavailable(
                f"the cell answered {response.status_code}: {response.text[:300]}", code="cell_unavailable"
            )
        if response.status_code >= 400:
            raise ValidationFailed(f"the cell refused: {response.text[:300]}", code="cell_refused")
        return msgspec.json.decode(response.content, type=kind)

    async def create(self, spec: SpaceSpec) -> Space:
        return await self._call("POST", SPACES_PATH, msgspec.json.encode(spec), Space)  # type: ignore[return-value]

    async def export(self, tenant_id: str, label: str) -> SpaceExport:
        body = msgspec.json.encode(SpaceExportRequest(label=label))
        return await self._call("POST", f"{SPACES_PATH}/{tenant_id}/export", body, SpaceExport)  # type: ignore[return-value]

    async def remove(self, tenant_id: str) -> SpaceRemoval:
        return await self._call("DELETE", f"{SPACES_PATH}/{tenant_id}", None, SpaceRemoval)  # type: ignore[return-value]

    async def close(self) -> None:
        await self._client.aclose()
