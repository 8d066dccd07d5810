"""List members, change their role, remove them; a tenant always keeps an owner."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit.service import AuditService
from control_plane.db.models import Membership, User
from control_plane.memberships import schemas
from kernel.errors import Conflict, NotFound, PermissionDenied
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.tenancy import tenant_scope


def member_view(membership: Membership, user: User) -> schemas.Member:
    return schemas.Member(
        user_id=user.id,
        tenant_id=membership.tenant_id,
        email=user.email,
        name=user.name,
        role=membership.role,  # type: ignore[arg-type]
        created_at=membership.created_at,
        updated_at=membership.updated_at,
    )


class MembershipService:
    def __init__(self, db: AsyncSession, audit: AuditService) -> None:
        self.db = db
        self.audit = audit

    async def role_of(self, tenant_id: str, user_id: str) -> str | None:
        with tenant_scope(tenant_id):
            return await self.db.scalar(
                select(Membership.role).where(Membership.tenant_id == tenant_id, Membership.user_id == user_id)
            )

    async def _member(self, tenant_id: str, user_id: str) -> tuple[Membership, User]:
        row = (
            await self.db.execute(
                select(Membership, User)
                .join(User, User.id == Membership.user_id)
                .where(Membership.tenant_id == tenant_id, Membership.user_id == user_id)
            )
        ).first()
        if row is None:
            raise NotFound(f"No member {user_id} in this tenant.", code="member_not_found")
        return row[0], row[1]

    async def list(
        self, tenant_id: str, *, role: str | None = None, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> schemas.MemberPage:
        query = (
            select(Membership, User).join(User, User.id == Membership.user_id).where(Membership.tenant_id == tenant_id)
        )
        if role:
            query = query.where(Membership.role == role)
        query = keyset(query, Membership.created_at, Membership.id, cursor, newest_first=False, limit=limit)
        with tenant_scope(tenant_id):
            rows, next_cursor = page(
                (await self.db.execute(query)).all(), limit, lambda row: (row[0].created_at, row[0].id)
            )
        return schemas.MemberPage(items=[member_view(m, u) for m, u in rows], next_cursor=next_cursor)

    async def get(self, tenant_id: str, user_id: str) -> schemas.Member:
        with tenant_scope(tenant_id):
            return member_view(*await self._member(tenant_id, user_id))

    async def _ensure_another_owner(self, tenant_id: str, membership: Membership) -> None:
        if membership.role != "owner":
            return
        # NOTE: FOR UPDATE serialises two concurrent demotions of the last two owners on PostgreSQL.
        owners = (
            await self.db.scalars(
                select(Membership.id)
                .where(Membership.tenant_id == tenant_id, Membership.role == "owner")
                .with_for_update()
            )
        ).all()
        if len(owners) <= 1:
            raise Conflict("A tenant must keep at least one owner; make another member owner first.", code="last_owner")

    async def update_role(
        self, tenant_id: str, user_id: str, data: schemas.MemberUpdate, *, may_manage_owners: bool
    ) -> schemas.Member:
        with tenant_scope(tenant_id):
            membership, user = await self._member(tenant_id, user_id)
            if "owner" in (membership.role, data.role) and not may_manage_owners and membership.role != data.role:
                raise PermissionDenied("Only an owner can grant or take away the owner role.", code="owner_required")
            if data.role != "owner":
                await self._ensure_another_owner(tenant_id, membership)
            before = membership.role
            membership.role = data.role
            self.audit.record(
                "member.role_changed",
                tenant_id=tenant_id,
                target_type="user",
                target_id=user.id,
                details={"from": before, "to": data.role},
            )
            await self.db.commit()
            return member_view(membership, user)

    async def remove(self, tenant_id: str, user_id: str, *, may_manage_owners: bool) -> None:
        with tenant_scope(tenant_id):
            membership, user = await self._member(tenant_id, user_id)
            if membership.role == "owner" and not may_manage_owners:
                raise PermissionDenied("Only an owner can remove an owner.", code="owner_required")
            await self._ensure_another_owner(tenant_id, membership)
            await self.db.delete(membership)
            self.audit.record(
                "member.removed",
                tenant_id=tenant_id,
                target_type="user",
                target_id=user.id,
                details={"role": membership.role},
            )
            await self.db.commit()
