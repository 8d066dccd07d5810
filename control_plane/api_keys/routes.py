"""API key endpoints of a tenant."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from control_plane.api_keys import schemas
from control_plane.identity.principal import Principal
from control_plane.runtime import Services
from control_plane.tenants.routes import Limit
from kernel.pagination import DEFAULT_LIMIT


class ApiKeyController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}/api-keys"
    tags = ["API keys"]

    @post("/", operation_id="CreateApiKey", opt={"permission": ("api_keys", "write"), "audit": "api_key.created"})
    async def create_api_key(
        self,
        tenant_id: FromPath[str],
        data: JSONBody[schemas.ApiKeyCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> schemas.ApiKeyCreated:
        """Create a key for the tenant's servers. The secret is in this response only: store it now."""
        return await services.api_keys.create(tenant_id, data, principal.id)

    @get("/", operation_id="ListApiKeys", opt={"permission": ("api_keys", "read")})
    async def list_api_keys(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.ApiKeyPage:
        """The tenant's keys, newest first, without secrets."""
        return await services.api_keys.list(tenant_id, cursor=cursor, limit=limit)

    @get("/{key_id:str}", operation_id="GetApiKey", opt={"permission": ("api_keys", "read")})
    async def get_api_key(
        self, tenant_id: FromPath[str], key_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.ApiKey:
        """One key, without its secret."""
        return await services.api_keys.get(tenant_id, key_id)

    @post(
        "/{key_id:str}/rotate",
        operation_id="RotateApiKey",
        status_code=200,
        opt={"permission": ("api_keys", "write"), "audit": "api_key.rotated"},
    )
    async def rotate_api_key(
        self,
        tenant_id: FromPath[str],
        key_id: FromPath[str],
        services: NamedDependency[Services],
        data: JSONBody[schemas.ApiKeyRotate | None] = None,
    ) -> schemas.ApiKeyCreated:
        """Issue a new secret for the key. The old one keeps working for `grace_period_seconds` (default 0)."""
        return await services.api_keys.rotate(tenant_id, key_id, data or schemas.ApiKeyRotate())

    @post(
        "/{key_id:str}/revoke",
        operation_id="RevokeApiKey",
        status_code=200,
        opt={"permission": ("api_keys", "write"), "audit": "api_key.revoked"},
    )
    async def revoke_api_key(
        self, tenant_id: FromPath[str], key_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.ApiKey:
        """Revoke the key at once, including any secret still in a rotation grace period."""
        return await services.api_keys.revoke(tenant_id, key_id)
