"""Users: invitations, sign-in sessions, passwords, platform roles."""

from __future__ import annotations

import datetime as dt

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit.service import AuditService
from control_plane.db.models import Invite, Membership, Tenant, User, UserSession
from control_plane.identity import schemas
from control_plane.identity.models import PasswordReset
from control_plane.identity.principal import Principal
from control_plane.identity.secrets import Passwords, check_password_strength, new_token, token_hash
from control_plane.settings import Settings
from control_plane.sso.policy import enforcing_connection, sso_session_is_revoked
from kernel.db import new_id, utcnow
from kernel.errors import (
    Conflict,
    Gone,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    ValidationFailed,
)
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.ports.kv import KeyValueStore
from kernel.ports.mail import Mailer, MailMessage
from kernel.tenancy import dangerously_unscoped, tenant_scope

SESSION_PREFIX = "lvs"
INVITE_PREFIX = "lvi"
RESET_PREFIX = "lvr"
# A reset link works once, for thirty minutes.
RESET_TTL = dt.timedelta(minutes=30)
# Reset mails one email may trigger per window: enough for a typo, too few to flood an inbox.
RESET_MAILS_PER_WINDOW = 3
RESET_WINDOW_SECONDS = 15 * 60
MAX_LOCKOUT_SECONDS = 3600
GENERIC_LOGIN_ERROR = "The email or password is incorrect."


def normalize_email(email: str) -> str:
    return email.strip().lower()


def user_view(user: User) -> schemas.User:
    return msgspec.convert(user, schemas.User, from_attributes=True)


def invite_view(invite: Invite, now: dt.datetime | None = None) -> schemas.Invite:
    now = now or utcnow()
    if invite.accepted_at:
        status = "accepted"
    elif invite.revoked_at:
        status = "revoked"
    elif invite.expires_at <= now:
        status = "expired"
    else:
        status = "pending"
    return schemas.Invite(
        id=invite.id,
        tenant_id=invite.tenant_id,
        email=invite.email,
        role=invite.role,
        status=status,
        created_at=invite.created_at,
        expires_at=invite.expires_at,
        accepted_at=invite.accepted_at,
    )


class LoginThrottle:
    """Counts failed sign-ins per email; past the limit the email is locked, each time longer.

    Keyed by email whether or not an account exists, so a lockout reveals nothing.
    """

    def __init__(self, kv: KeyValueStore, settings: Settings) -> None:
        self.kv = kv
        self.max_failures = settings.login_max_failures
        self.window = settings.login_window_seconds
        self.base_lockout = settings.login_lockout_seconds

    async def check(self, email: str) -> None:
        left = await self.kv.ttl(f"login:lock:{email}")
        if left is not None and left > 0:
            raise QuotaExceeded(
                "Too many failed sign-ins for this email. Wait before trying again, or reset the password.",
                retry_after=int(left + 0.999),
                code="login_locked",
            )

    async def failed(self, email: str) -> None:
        failures = await self.kv.incr(f"login:fail:{email}", ttl=self.window)
        if failures >= self.max_failures:
            lockout = min(MAX_LOCKOUT_SECONDS, self.base_lockout * 2 ** (failures - self.max_failures))
            # Keep the count at least as long as the lock, so the next failure doubles it.
            await self.kv.set(f"login:fail:{email}", str(failures), ttl=max(self.window, lockout * 2))
            await self.kv.set(f"login:lock:{email}", "1", ttl=lockout)

    async def succeeded(self, email: str) -> None:
        await self.kv.delete(f"login:fail:{email}")

    async def lift(self, email: str) -> None:
        """A reset password ends the lockout its owner may have run into."""
        await self.kv.delete(f"login:fail:{email}")
        await self.kv.delete(f"login:lock:{email}")


class IdentityService:
    def __init__(
        self,
        db: AsyncSession,
        settings: Settings,
        passwords: Passwords,
        kv: KeyValueStore,
        mailer: Mailer,
        audit: AuditService,
    ) -> None:
        self.db = db
        self.settings = settings
        self.passwords = passwords
        self.mailer = mailer
        self.audit = audit
        self.kv = kv
        self.throttle = LoginThrottle(kv, settings)

    # --- users --------------------------------------------------------------------------

    async def _user(self, user_id: str) -> User:
        user = await self.db.get(User, user_id)
        if user is None:
            raise NotFound(f"No user {user_id}.", code="user_not_found")
        return user

    async def _user_by_email(self, email: str) -> User | None:
        return await self.db.scalar(select(User).where(User.email == normalize_email(email)))

    async def get_user(self, user_id: str) -> schemas.User:
        return user_view(await self._user(user_id))

    async def list_users(
        self,
        *,
        email: str | None = None,
        platform_role: str | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> schemas.UserPage:
        query = select(User)
        if email:
            query = query.where(User.email.contains(normalize_email(email)))
        if platform_role:
            query = query.where(User.platform_role == platform_role)
        query = keyset(query, User.created_at, User.id, cursor, newest_first=False, limit=limit)
        rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda u: (u.created_at, u.id))
        return schemas.UserPage(items=[user_view(u) for u in rows], next_cursor=next_cursor)

    async def update_user(self, user_id: str, data: schemas.UserUpdate, actor: Principal) -> schemas.User:
        user = await self._user(user_id)
        changes: dict[str, object] = {}
        if data.name is not None:
            user.name = changes["name"] = data.name
        if data.platform_role is not None:
            role = None if data.platform_role == "none" else data.platform_role
            if user.id == actor.id and role != "ops_admin":
                raise Conflict("You cannot remove your own ops_admin role.", code="cannot_demote_self")
            user.platform_role = changes["platform_role"] = role
        if data.is_active is not None:
            if user.id == actor.id and not data.is_active:
                raise Conflict("You cannot disable your own account.", code="cannot_disable_self")
            user.is_active = changes["is_active"] = data.is_active
            if not data.is_active:
                await self.db.execute(delete(UserSession).where(UserSession.user_id == user.id))
        self.audit.record("user.updated", tenant_id=None, target_type="user", target_id=user.id, details=changes)
        with dangerously_unscoped():
            await self.db.commit()
        return user_view(user)

    async def me(self, principal: Principal) -> schemas.Me:
        if principal.kind == "api_key":
            return schemas.Me(
                principal_type="api_key",
                user=None,
                api_key_id=principal.id,
                tenant_id=principal.tenant_id,
                scopes=list(principal.scopes),
                memberships=[],
            )
        user = await self._user(principal.id)
        with dangerously_unscoped():
            rows = (
                await self.db.execute(
                    select(Membership.role, Tenant)
                    .join(Tenant, Tenant.id == Membership.tenant_id)
                    .where(Membership.user_id == user.id, Tenant.status != "deleted")
                    .order_by(Tenant.name)
                )
            ).all()
        return schemas.Me(
            principal_type="user",
            user=user_view(user),
            memberships=[
                schemas.TenantAccess(
                    tenant_id=t.id, tenant_name=t.name, tenant_slug=t.slug, tenant_status=t.status, role=role
                )
                for role, t in rows
            ],
        )

    async def create_admin(self, email: str, password: str, name: str = "") -> schemas.User:
        """Create (or promote) an ``ops_admin`` with this password. For the CLI."""
        email = normalize_email(email)
        check_password_strength(password, email)
        user = await self._user_by_email(email)
        if user is None:
            user = User(id=new_id("usr"), email=email, name=name)
            self.db.add(user)
        user.platform_role = "ops_admin"
        user.is_active = True
        user.password_hash = await self.passwords.hash(password)
        user.password_changed_at = utcnow()
        await self.db.flush()
        self.audit.record("user.admin_created", tenant_id=None, target_type="user", target_id=user.id)
        with dangerously_unscoped():
            await self.db.commit()
        return user_view(user)

    # --- sessions -----------------------------------------------------------------------

    async def login(
        self, data: schemas.LoginRequest, *, source_ip: str | None, user_agent: str | None
    ) -> schemas.SessionToken:
        email = normalize_email(data.email)
        await self.throttle.check(email)
        user = await self._user_by_email(email)
        ok = await self.passwords.verify(user.password_hash if user else None, data.password)
        if not ok or user is None or not user.is_active:
            await self.throttle.failed(email)
            raise NotAuthenticated(GENERIC_LOGIN_ERROR, code="invalid_login")
        await self.throttle.succeeded(email)
        # Checked only once the password is right, so the answer reveals nothing to a guesser.
        if await enforcing_connection(self.db, user) is not None:
            raise PermissionDenied(
                "Your organisation requires single sign-on: continue with your identity provider at /login.",
                code="sso_required",
            )
        if self.passwords.needs_rehash(user.password_hash or ""):
            user.password_hash = await self.passwords.hash(data.password)
        session, token = self.stage_session(user, source_ip=source_ip, user_agent=user_agent)
        self.audit.record("session.created", tenant_id=None, target_type="user", target_id=user.id)
        with dangerously_unscoped():
            await self.db.commit()
        return schemas.SessionToken(token=token, expires_at=session.expires_at, user=user_view(user))

    def stage_session(self, user: User, *, source_ip: str | None, user_agent: str | None) -> tuple[UserSession, str]:
        """Add a new session of ``user`` to the caller's transaction; returns it and its token (shown once)."""
        token = new_token(SESSION_PREFIX)
        now = utcnow()
        session = UserSession(
            id=new_id("ses"),
            user_id=user.id,
            token_hash=token_hash(token),
            created_at=now,
            expires_at=now + dt.timedelta(seconds=self.settings.session_ttl_seconds),
            source_ip=source_ip,
            user_agent=(user_agent or "")[:400] or None,
        )
        self.db.add(session)
        user.last_login_at = now
        return session, token

    async def authenticate_session(self, token: str) -> Principal | None:
        """The user behind a session token, or None when unknown, expired or the user is disabled."""
        row = (
            await self.db.execute(
                select(UserSession, User)
                .join(User, User.id == UserSession.user_id)
                .where(UserSession.token_hash == token_hash(token))
            )
        ).first()
        if row is None:
            return None
        session, user = row
        if session.expires_at <= utcnow() or not user.is_active:
            return None
        if await sso_session_is_revoked(self.db, session.id, user.id):
            return None
        return Principal(
            kind="user", id=user.id, label=user.email, platform_role=user.platform_role, session_id=session.id
        )

    async def logout(self, principal: Principal) -> None:
        if principal.session_id:
            await self.db.execute(delete(UserSession).where(UserSession.id == principal.session_id))
        self.audit.record("session.deleted", tenant_id=None, target_type="user", target_id=principal.id)
        with dangerously_unscoped():
            await self.db.commit()

    async def change_password(self, principal: Principal, data: schemas.PasswordChange) -> None:
        user = await self._user(principal.id)
        if not await self.passwords.verify(user.password_hash, data.current_password):
            raise ValidationFailed("The current password is incorrect.", code="invalid_current_password")
        check_password_strength(data.new_password, user.email)
        user.password_hash = await self.passwords.hash(data.new_password)
        user.password_changed_at = utcnow()
        # Every other session ends: a changed password should lock out whoever knew the old one.
        await self.db.execute(
            delete(UserSession).where(UserSession.user_id == user.id, UserSession.id != principal.session_id)
        )
        self.audit.record("user.password_changed", tenant_id=None, target_type="user", target_id=user.id)
        with dangerously_unscoped():
            await self.db.commit()

    async def list_sessions(self, principal: Principal) -> list[schemas.SessionInfo]:
        """The caller's sessions that have not expired, newest first; ``current`` marks this one."""
        rows = await self.db.scalars(
            select(UserSession)
            .where(UserSession.user_id == principal.id, UserSession.expires_at > utcnow())
            .order_by(UserSession.created_at.desc(), UserSession.id)
        )
        return [
            schemas.SessionInfo(
                id=s.id,
                created_at=s.created_at,
                expires_at=s.expires_at,
                source_ip=s.source_ip,
                user_agent=s.user_agent,
                current=s.id == principal.session_id,
            )
            for s in rows
        ]

    async def revoke_session(self, principal: Principal, session_id: str) -> None:
        """End one of the caller's own sessions (another person's answers 404, like a missing one)."""
        result = await self.db.execute(
            delete(UserSession).where(UserSession.id == session_id, UserSession.user_id == principal.id)
        )
        if not result.rowcount:
            raise NotFound(f"No session {session_id}.", code="session_not_found")
        self.audit.record("session.revoked", tenant_id=None, target_type="session", target_id=session_id)
        with dangerously_unscoped():
            await self.db.commit()

    # --- forgotten passwords ------------------------------------------------------------

    async def request_password_reset(self, email: str, *, source_ip: str | None) -> None:
        """Mail a single-use reset link to ``email`` if an active account has it.

        The caller learns nothing either way (no account enumeration); a few mails per email
        and window at most, the rest are dropped silently.
        """
        email = normalize_email(email)
        sent = await self.kv.incr(f"pwreset:mail:{email}", ttl=RESET_WINDOW_SECONDS)
        user = await self._user_by_email(email)
        if user is None or not user.is_active or sent > RESET_MAILS_PER_WINDOW:
            return
        now = utcnow()
        token = new_token(RESET_PREFIX)
        reset = PasswordReset(
            id=new_id("pwr"),
            user_id=user.id,
            token_hash=token_hash(token),
            created_at=now,
            expires_at=now + RESET_TTL,
            source_ip=source_ip,
        )
        self.db.add(reset)
        self.audit.record("password_reset.requested", tenant_id=None, target_type="user", target_id=user.id)
        with dangerously_unscoped():
            await self.db.flush()
            # Mailed before the commit: a reset whose mail failed never becomes usable.
            await self.mailer.send(self._reset_mail(user.email, token, reset.expires_at))
            await self.db.commit()

    def _reset_mail(self, email: str, token: str, expires_at: dt.datetime) -> MailMessage:
        base = self.settings.base_url
        text = (
            "Someone asked to reset the password of your Livora account. If it was you, open this link\n"
            "and choose a new password:\n\n"
            f"  {base}/console/reset?token={token}\n\n"
            f"The link works once, until {expires_at:%Y-%m-%d %H:%M} UTC. Resetting signs you out everywhere.\n"
            "If you did not ask for it, ignore this mail: your password stays as it is.\n"
        )
        return MailMessage(to=email, subject="Reset your Livora password", text=text)

    async def reset_password(self, token: str, new_password: str) -> schemas.User:
        """Set a new password with a reset token: it then stops working, and every session of the account ends."""
        now = utcnow()
        with dangerously_unscoped():
            reset = await self.db.scalar(select(PasswordReset).where(PasswordReset.token_hash == token_hash(token)))
            if reset is None:
                raise NotFound("This reset link is unknown; ask for a new one.", code="reset_not_found")
            if reset.used_at is not None:
                raise Conflict("This reset link was already used; ask for a new one.", code="reset_already_used")
            if reset.expires_at <= now:
                raise Gone("This reset link has expired; ask for a new one.", code="reset_expired")
            user = await self._user(reset.user_id)
            if not user.is_active:
                raise Conflict("This account is disabled; contact your administrator.", code="user_disabled")
            check_password_strength(new_password, user.email)
            # The conditional update makes the token single-use even when two requests race with it.
            claimed = await self.db.execute(
                update(PasswordReset)
                .where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None))
                .values(used_at=now)
                .returning(PasswordReset.id)
            )
            if reset.id not in set(claimed.scalars()):
                await self.db.rollback()
                raise Conflict("This reset link was already used; ask for a new one.", code="reset_already_used")
            user.password_hash = await self.passwords.hash(new_password)
            user.password_changed_at = now
            await self.db.execute(delete(UserSession).where(UserSession.user_id == user.id))
            self.audit.record("password_reset.completed", tenant_id=None, target_type="user", target_id=user.id)
            await self.db.commit()
        await self.throttle.lift(user.email)
        return user_view(user)

    # --- invitations --------------------------------------------------------------------

    async def invite(self, tenant_id: str | None, email: str, role: str, invited_by: str | None) -> schemas.Invite:
        """Invite ``email`` to ``role`` in a tenant (or, tenant_id None, to a platform role) and mail the code."""
        with dangerously_unscoped() if tenant_id is None else tenant_scope(tenant_id):
            invite = await self.stage_invite(tenant_id, email, role, invited_by)
            await self.db.commit()
        return invite

    async def stage_invite(
        self, tenant_id: str | None, email: str, role: str, invited_by: str | None
    ) -> schemas.Invite:
        """Add the invitation to the caller's transaction and mail it; the caller commits.

        Re-inviting an address with a pending invitation replaces it, so the latest mail is the one that works.
        If the mail cannot be sent this raises and the caller's transaction is not committed.
        """
        email = normalize_email(email)
        now = utcnow()
        tenant = await self.db.get(Tenant, tenant_id) if tenant_id else None
        if tenant is not None and tenant.status in ("deleting", "deleted"):
            raise Conflict(f"The tenant is {tenant.status}; nobody can join it.", code="tenant_deleted")
        user = await self._user_by_email(email)
        if tenant_id is not None and user is not None:
            member = await self.db.scalar(
                select(Membership).where(Membership.tenant_id == tenant_id, Membership.user_id == user.id)
            )
            if member is not None:
                raise Conflict(f"{email} is already a member of this tenant.", code="already_member")
        if tenant_id is None and user is not None and user.platform_role == role:
            raise Conflict(f"{email} already has the {role} role.", code="already_has_role")
        pending = await self.db.scalars(
            select(Invite).where(
                Invite.email == email,
                Invite.tenant_id == tenant_id if tenant_id else Invite.tenant_id.is_(None),
                Invite.accepted_at.is_(None),
                Invite.revoked_at.is_(None),
            )
        )
        for old in pending:
            old.revoked_at = now
        token = new_token(INVITE_PREFIX)
        invite = Invite(
            id=new_id("inv"),
            tenant_id=tenant_id,
            email=email,
            role=role,
            token_hash=token_hash(token),
            invited_by=invited_by,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=self.settings.invite_ttl_seconds),
        )
        self.db.add(invite)
        self.audit.record(
            "invite.created",
            tenant_id=tenant_id,
            target_type="invite",
            target_id=invite.id,
            details={"email": email, "role": role},
        )
        await self.db.flush()
        await self.mailer.send(self._invite_mail(email, role, token, tenant, invite.expires_at))
        return invite_view(invite, now)

    def _invite_mail(
        self, email: str, role: str, token: str, tenant: Tenant | None, expires_at: dt.datetime
    ) -> MailMessage:
        where = f"the {tenant.name} workspace" if tenant else "Livora operations"
        base = self.settings.base_url
        text = (
            f"You have been invited to {where} on Livora as {role}.\n\n"
            f"Open this link to accept: choose your name and a password, or continue with your\n"
            f"organisation's single sign-on:\n\n"
            f"  {base}/console/invite?token={token}\n\n"
            f"The invitation expires {expires_at:%Y-%m-%d %H:%M} UTC and works once.\n\n"
            f"Your invitation code, for scripts (POST {base}/api/v1/invites/accept):\n  {token}\n"
        )
        return MailMessage(to=email, subject=f"You're invited to {where} on Livora", text=text)

    async def list_invites(
        self, tenant_id: str | None, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> schemas.InvitePage:
        query = keyset(
            select(Invite).where(Invite.tenant_id == tenant_id if tenant_id else Invite.tenant_id.is_(None)),
            Invite.created_at,
            Invite.id,
            cursor,
            newest_first=True,
            limit=limit,
        )
        with dangerously_unscoped() if tenant_id is None else tenant_scope(tenant_id):
            rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda i: (i.created_at, i.id))
        now = utcnow()
        return schemas.InvitePage(items=[invite_view(i, now) for i in rows], next_cursor=next_cursor)

    async def revoke_invite(self, tenant_id: str | None, invite_id: str) -> schemas.Invite:
        with dangerously_unscoped() if tenant_id is None else tenant_scope(tenant_id):
            invite = await self.db.scalar(
                select(Invite).where(
                    Invite.id == invite_id, Invite.tenant_id == tenant_id if tenant_id else Invite.tenant_id.is_(None)
                )
            )
            if invite is None:
                raise NotFound(f"No invitation {invite_id}.", code="invite_not_found")
            if invite.accepted_at is not None:
                raise Conflict("The invitation was already accepted.", code="invite_already_used")
            if invite.revoked_at is None:
                invite.revoked_at = utcnow()
            self.audit.record("invite.revoked", tenant_id=tenant_id, target_type="invite", target_id=invite.id)
            await self.db.commit()
        return invite_view(invite)

    async def describe_invite(self, token: str) -> schemas.InvitePreview:
        """What a pending invitation code opens; the same refusals as accepting it (404, 409, 410)."""
        now = utcnow()
        with dangerously_unscoped():
            invite = await self.db.scalar(select(Invite).where(Invite.token_hash == token_hash(token)))
            if invite is None or invite.revoked_at is not None:
                raise NotFound("This invitation code is unknown or was withdrawn.", code="invite_not_found")
            if invite.accepted_at is not None:
                raise Conflict("This invitation was already used; sign in instead.", code="invite_already_used")
            if invite.expires_at <= now:
                raise Gone("This invitation has expired; ask for a new one.", code="invite_expired")
            tenant = await self.db.get(Tenant, invite.tenant_id) if invite.tenant_id else None
            if tenant is not None and tenant.status in ("deleting", "deleted"):
                raise Gone("The workspace of this invitation no longer exists.", code="invite_expired")
            user = await self._user_by_email(invite.email)
        return schemas.InvitePreview(
            email=invite.email,
            role=invite.role,
            tenant_name=tenant.name if tenant else None,
            expires_at=invite.expires_at,
            needs_password=user is None or user.password_hash is None,
        )

    async def accept_invite(
        self, data: schemas.InviteAccept, *, signed_in: Principal | None = None
    ) -> schemas.InviteAccepted:
        """Accept with the code; ``signed_in``: the person already signed in (for example by single sign-on)
        accepts for their own account, with no password to choose."""
        now = utcnow()
        # The token is the credential here; which tenant it opens is learnt from it.
        with dangerously_unscoped():
            invite = await self.db.scalar(select(Invite).where(Invite.token_hash == token_hash(data.token)))
            if invite is None or invite.revoked_at is not None:
                raise NotFound("This invitation code is unknown or was withdrawn.", code="invite_not_found")
            if invite.accepted_at is not None:
                raise Conflict("This invitation was already used; sign in instead.", code="invite_already_used")
            if invite.expires_at <= now:
                raise Gone("This invitation has expired; ask for a new one.", code="invite_expired")
            tenant = await self.db.get(Tenant, invite.tenant_id) if invite.tenant_id else None
            if tenant is not None and tenant.status in ("deleting", "deleted"):
                raise Gone("The workspace of this invitation no longer exists.", code="invite_expired")
            user = await self._user_by_email(invite.email)
            if user is None:
                user = User(id=new_id("usr"), email=invite.email, name=data.name or "")
                self.db.add(user)
            elif not user.is_active:
                raise Conflict("This account is disabled; contact your administrator.", code="user_disabled")
            if signed_in is not None and signed_in.id != user.id:
                raise Conflict(
                    f"This invitation is for {invite.email}; you are signed in as {signed_in.label}.",
                    code="invite_for_someone_else",
                )
            if user.password_hash is None and signed_in is None:
                if not data.password:
                    raise ValidationFailed("Choose a password to create your account.", code="password_required")
                check_password_strength(data.password, user.email)
                user.password_hash = await self.passwords.hash(data.password)
                user.password_changed_at = now
                if data.name:
                    user.name = data.name
            if invite.tenant_id is None:
                user.platform_role = invite.role
            else:
                await self.db.flush()
                exists = await self.db.scalar(
                    select(Membership).where(Membership.tenant_id == invite.tenant_id, Membership.user_id == user.id)
                )
                if exists is None:
                    self.db.add(
                        Membership(id=new_id("mem"), tenant_id=invite.tenant_id, user_id=user.id, role=invite.role)
                    )
            invite.accepted_at = now
            self.audit.record(
                "invite.accepted",
                tenant_id=invite.tenant_id,
                target_type="invite",
                target_id=invite.id,
                details={"user_id": user.id, "role": invite.role},
            )
            try:
                await self.db.commit()
            except IntegrityError:
                await self.db.rollback()
                raise Conflict("This invitation was accepted concurrently.", code="invite_already_used") from None
        return schemas.InviteAccepted(user=user_view(user), tenant_id=invite.tenant_id, role=invite.role)
