"""Member endpoints of a tenant."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, patch
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from control_plane.http import may
from control_plane.memberships import schemas
from control_plane.rbac.roles import TenantRole
from control_plane.runtime import Services
from control_plane.tenants.routes import Limit
from kernel.pagination import DEFAULT_LIMIT


class MemberController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}/members"
    tags = ["Members"]

    @get("/", operation_id="ListMembers", opt={"permission": ("members", "read")})
    async def list_members(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        role: FromQuery[TenantRole | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.MemberPage:
        """The tenant's members and their roles."""
        return await services.members.list(tenant_id, role=role, cursor=cursor, limit=limit)

    @get("/{user_id:str}", operation_id="GetMember", opt={"permission": ("members", "read")})
    async def get_member(
        self, tenant_id: FromPath[str], user_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.Member:
        """One member."""
        return await services.members.get(tenant_id, user_id)

    @patch(
        "/{user_id:str}",
        operation_id="UpdateMember",
        opt={"permission": ("members", "write"), "audit": "member.role_changed"},
    )
    async def update_member(
        self,
        tenant_id: FromPath[str],
        user_id: FromPath[str],
        data: JSONBody[schemas.MemberUpdate],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> schemas.Member:
        """Change a member's role. Only owners grant or take away `owner`; the last owner keeps it."""
        return await services.members.update_role(
            tenant_id, user_id, data, may_manage_owners=may(request, "owners", "write")
        )

    @delete(
        "/{user_id:str}",
        operation_id="RemoveMember",
        opt={"permission": ("members", "write"), "audit": "member.removed"},
    )
    async def remove_member(
        self,
        tenant_id: FromPath[str],
        user_id: FromPath[str],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> None:
        """Remove a member from the tenant. The last owner cannot be removed."""
        await services.members.remove(tenant_id, user_id, may_manage_owners=may(request, "owners", "write"))
