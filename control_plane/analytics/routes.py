"""Cell tokens: a signed-in person's short-lived pass to read a tenant's analytics on its cell."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from control_plane.analytics.keys import signing_key
from control_plane.analytics.schemas import CellToken
from control_plane.identity.principal import Principal
from control_plane.runtime import Services
from data_plane.contract.tokens import sign
from kernel.errors import ConfigError, PermissionDenied, Unavailable
from kernel.logging import get_logger

log = get_logger("livora.analytics")


class CellTokenController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}/analytics/token"
    tags = ["Analytics"]

    @post(
        "/",
        operation_id="CreateAnalyticsToken",
        status_code=201,
        opt={"permission": ("analytics", "read"), "audit": "analytics.token_issued"},
    )
    async def create_analytics_token(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        request: Request[Any, Any, Any],
    ) -> CellToken:
        """A token for the tenant's cell, valid for a few minutes (15 by default), for people with the
        `analyst` role or higher. API keys do not need one: give the key the `analytics:read` scope and
        send it to the cell directly."""
        if principal.kind != "user":
            raise PermissionDenied(
                "API keys call the cell directly (with the `analytics:read` scope); tokens are for people.",
                code="permission_denied",
            )
        settings = services.runtime.settings
        role = request.state.get("tenant_role") or principal.platform_role or ""
        try:
            key = signing_key(settings)
        except ConfigError as exc:
            log.error("cell_token_key_missing", problem=exc.message)
            raise Unavailable(
                "Analytics tokens are not set up on this installation (LIVORA_CELL_TOKEN_KEY); use an API key.",
                code="cell_tokens_unavailable",
            ) from None
        token, claims = sign(
            key,
            tenant_id=tenant_id,
            subject=principal.id,
            role=role,
            ttl_seconds=settings.cell_token_ttl_seconds,
        )
        services.audit.record(
            "analytics.token_issued",
            tenant_id=tenant_id,
            target_type="user",
            target_id=principal.id,
            details={"role": role, "expires_at": claims.exp},
        )
        await services.db.commit()
        return CellToken(
            token=token,
            tenant_id=tenant_id,
            role=role,
            expires_at=dt.datetime.fromtimestamp(claims.exp, dt.UTC),
        )
