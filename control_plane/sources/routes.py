"""Source endpoints of a tenant."""

from __future__ import annotations

from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from control_plane.identity.principal import Principal
from control_plane.runtime import Services
from control_plane.sources import schemas
from control_plane.tenants.routes import Limit
from kernel.pagination import DEFAULT_LIMIT


class SourceController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}/sources"
    tags = ["Sources"]

    @post("/", operation_id="CreateSource", opt={"permission": ("sources", "write"), "audit": "source.created"})
    async def create_source(
        self,
        tenant_id: FromPath[str],
        data: JSONBody[schemas.SourceCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> schemas.SourceCreated:
        """Create a source (web, server or mobile). Its write key is in this response in full, once."""
        return await services.sources.create(tenant_id, data, principal.id)

    @get("/", operation_id="ListSources", opt={"permission": ("sources", "read")})
    async def list_sources(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.SourcePage:
        """The tenant's sources, oldest first, with the visible prefix of each write key."""
        return await services.sources.list(tenant_id, cursor=cursor, limit=limit)

    @get("/{source_id:str}", operation_id="GetSource", opt={"permission": ("sources", "read")})
    async def get_source(
        self, tenant_id: FromPath[str], source_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.Source:
        """One source."""
        return await services.sources.get(tenant_id, source_id)

    @patch(
        "/{source_id:str}",
        operation_id="UpdateSource",
        opt={"permission": ("sources", "write"), "audit": "source.updated"},
    )
    async def update_source(
        self,
        tenant_id: FromPath[str],
        source_id: FromPath[str],
        data: JSONBody[schemas.SourceUpdate],
        services: NamedDependency[Services],
    ) -> schemas.Source:
        """Rename a source or change a web source's allowed origins."""
        return await services.sources.update(tenant_id, source_id, data)

    @post(
        "/{source_id:str}/rotate",
        operation_id="RotateWriteKey",
        status_code=200,
        opt={"permission": ("sources", "write"), "audit": "source.key_rotated"},
    )
    async def rotate_write_key(
        self,
        tenant_id: FromPath[str],
        source_id: FromPath[str],
        services: NamedDependency[Services],
        data: JSONBody[schemas.WriteKeyRotate | None] = None,
    ) -> schemas.SourceCreated:
        """Issue a new write key. The old one keeps working for `grace_period_seconds` (default 0)."""
        return await services.sources.rotate(tenant_id, source_id, data or schemas.WriteKeyRotate())

    @post(
        "/{source_id:str}/revoke",
        operation_id="RevokeSource",
        status_code=200,
        opt={"permission": ("sources", "write"), "audit": "source.revoked"},
    )
    async def revoke_source(
        self, tenant_id: FromPath[str], source_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.Source:
        """Revoke the source: its write keys (current and in grace) are refused from now on."""
        return await services.sources.revoke(tenant_id, source_id)
