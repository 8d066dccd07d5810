"""SSO rules the identity code applies: password sign-in refused under "enforce SSO", SSO sessions' lifetime."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db.models import Membership, Tenant, User, UserSession
from control_plane.sso.models import SsoConnection, SsoDomain, SsoSession
from kernel.tenancy import dangerously_unscoped


def email_domain(email: str) -> str:
    return email.rpartition("@")[2].strip().lower()


async def enforcing_connection(db: AsyncSession, user: User) -> SsoConnection | None:
    """The enabled connection that enforces SSO for this user: it claims the email's domain and the
    user is a member of its tenant. Users of the domain outside that tenant are not affected."""
    with dangerously_unscoped():
        return await db.scalar(
            select(SsoConnection)
            .join(SsoDomain, SsoDomain.connection_id == SsoConnection.id)
            .join(
                Membership,
                (Membership.tenant_id == SsoConnection.tenant_id) & (Membership.user_id == user.id),
            )
            .where(
                SsoDomain.domain == email_domain(user.email),
                SsoConnection.enforce_sso.is_(True),
                SsoConnection.enabled.is_(True),
            )
        )


async def sso_session_is_revoked(db: AsyncSession, session_id: str, user_id: str) -> bool:
    """True when ``session_id`` was opened through SSO and no longer stands: the user left the tenant,
    the tenant is gone, or the connection was disabled. The session row is then deleted for good,
    so re-adding the user does not revive it."""
    with dangerously_unscoped():
        row = (
            await db.execute(
                select(SsoSession.session_id, Membership.id, SsoConnection.enabled, Tenant.status)
                .join(SsoConnection, SsoConnection.id == SsoSession.connection_id)
                .join(Tenant, Tenant.id == SsoSession.tenant_id)
                .outerjoin(
                    Membership,
                    (Membership.tenant_id == SsoSession.tenant_id) & (Membership.user_id == SsoSession.user_id),
                )
                .where(SsoSession.session_id == session_id, SsoSession.user_id == user_id)
            )
        ).first()
    if row is None:
        return False  # not an SSO session, or its connection was deleted (which also deletes its sessions)
    _, membership_id, enabled, tenant_status = row
    if membership_id is not None and enabled and tenant_status not in ("deleting", "deleted"):
        return False
    await db.execute(delete(UserSession).where(UserSession.id == session_id))
    await db.commit()
    return True
