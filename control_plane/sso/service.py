"""SSO connections of a tenant, and the sign-in flow: start (PKCE, state, nonce), finish (checks, JIT users)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit.service import AuditService, build_entry
from control_plane.db.models import Membership, Tenant, User, UserSession
from control_plane.identity import schemas as identity_schemas
from control_plane.identity.service import IdentityService, normalize_email, user_view
from control_plane.rbac.roles import TENANT_ROLES
from control_plane.sso import schemas
from control_plane.sso.crypto import SecretBox
from control_plane.sso.models import SsoConnection, SsoDomain, SsoIdentity, SsoSession
from control_plane.sso.oidc import OidcClient, ProviderMetadata, check_url, pkce_pair
from control_plane.sso.policy import email_domain
from kernel.db import new_id, utcnow
from kernel.errors import (
    AppError,
    ConfigError,
    Conflict,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    Unavailable,
    ValidationFailed,
)
from kernel.logging import get_logger
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.tenancy import dangerously_unscoped, tenant_scope

if TYPE_CHECKING:
    from control_plane.runtime import Runtime

log = get_logger("livora.sso")

CALLBACK_PATH = "/api/v1/sso/callback"
START_PATH = "/api/v1/sso/start"
SIGN_IN_PAGE = "/login"
# Highest first: when several claim values map to roles, the first of these wins.
ROLE_RANK = {role: rank for rank, role in enumerate(TENANT_ROLES)}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def safe_return_to(value: str | None) -> str:
    """Only a path on this site: never an absolute or scheme-relative URL (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 500:
        return SIGN_IN_PAGE
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return SIGN_IN_PAGE
    return value


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects when no claim has the literal name."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def mapped_role(connection: SsoConnection, claims: dict[str, Any]) -> tuple[str, bool]:
    """The role the claims give (and whether a mapping matched), else the connection's default role."""
    if connection.role_claim:
        value = claim_at(claims, connection.role_claim)
        if isinstance(value, str):
            values = [value]
        elif isinstance(value, list):
            values = [v for v in value if isinstance(v, str)]
        else:
            values = []
        roles = [connection.role_mapping[v] for v in values if v in connection.role_mapping]
        if roles:
            return min(roles, key=lambda r: ROLE_RANK.get(r, len(ROLE_RANK))), True
    return connection.default_role, False


@dataclass
class SignedIn:
    session: identity_schemas.SessionToken
    return_to: str


class SsoService:
    def __init__(self, db: AsyncSession, runtime: Runtime, audit: AuditService, identity: IdentityService) -> None:
        self.db = db
        self.runtime = runtime
        self.settings = runtime.settings
        self.audit = audit
        self.identity = identity

    @property
    def oidc(self) -> OidcClient:
        return self.runtime.oidc

    @property
    def box(self) -> SecretBox:
        try:
            return self.runtime.secret_box
        except ConfigError as exc:
            log.error("sso_secret_key_missing", problem=exc.message)
            raise Unavailable(
                f"SSO is not configured on this installation: {exc.variable} {exc.message}.",
                code="secret_key_missing",
            ) from None

    @property
    def redirect_uri(self) -> str:
        return f"{self.settings.base_url}{CALLBACK_PATH}"

    def _view(self, connection: SsoConnection) -> schemas.SsoConnection:
        return schemas.SsoConnection(
            id=connection.id,
            tenant_id=connection.tenant_id,
            name=connection.name,
            issuer=connection.issuer,
            client_id=connection.client_id,
            client_secret_set=bool(connection.client_secret_encrypted),
            scopes=list(connection.scopes),
            allowed_domains=list(connection.allowed_domains),
            role_claim=connection.role_claim,
            role_mapping=dict(connection.role_mapping),
            default_role=connection.default_role,
            enforce_sso=connection.enforce_sso,
            enabled=connection.enabled,
            redirect_uri=self.redirect_uri,
            sign_in_url=f"{self.settings.base_url}{START_PATH}?{urlencode({'connection_id': connection.id})}",
            created_at=connection.created_at,
            updated_at=connection.updated_at,
            last_tested_at=connection.last_tested_at,
            last_test_ok=connection.last_test_ok,
        )

    # --- connections -------------------------------------------------------------------------

    def _check_config(
        self,
        issuer: str | None,
        scopes: list[str],
        mapping: dict[str, str],
        default_role: str,
        *,
        may_grant_owner: bool,
    ) -> None:
        if issuer is not None:
            check_url(issuer, allow_local=self.settings.sso_allow_local_issuers)
        if "openid" not in scopes:
            raise ValidationFailed("The scopes must include `openid`.", code="sso_openid_scope_required")
        if not may_grant_owner and ("owner" in mapping.values() or default_role == "owner"):
            raise PermissionDenied("Only an owner can let SSO grant the owner role.", code="owner_required")

    async def _connection(self, tenant_id: str, connection_id: str) -> SsoConnection:
        connection = await self.db.scalar(
            select(SsoConnection).where(SsoConnection.id == connection_id, SsoConnection.tenant_id == tenant_id)
        )
        if connection is None:
            raise NotFound(f"No SSO connection {connection_id}.", code="sso_connection_not_found")
        return connection

    async def _claim_domains(self, connection: SsoConnection, domains: list[str]) -> None:
        wanted = sorted({d.lower() for d in domains})
        with dangerously_unscoped():  # a domain belongs to one tenant in the whole installation
            taken = (
                await self.db.scalars(
                    select(SsoDomain.domain).where(
                        SsoDomain.domain.in_(wanted), SsoDomain.connection_id != connection.id
                    )
                )
            ).all()
        if taken:
            raise Conflict(
                f"Another SSO connection already signs in {', '.join(sorted(taken))}.", code="sso_domain_taken"
            )
        await self.db.execute(delete(SsoDomain).where(SsoDomain.connection_id == connection.id))
        for domain in wanted:
            self.db.add(SsoDomain(domain=domain, tenant_id=connection.tenant_id, connection_id=connection.id))
        connection.allowed_domains = wanted

    async def _commit_domains(self) -> None:
        try:
            await self.db.commit()
        except IntegrityError:
            await self.db.rollback()
            raise Conflict("Another SSO connection claimed one of these domains.", code="sso_domain_taken") from None

    async def create(
        self, tenant_id: str, data: schemas.SsoConnectionCreate, actor_id: str | None, *, may_grant_owner: bool
    ) -> schemas.SsoConnection:
        self._check_config(
            data.issuer, data.scopes, data.role_mapping, data.default_role, may_grant_owner=may_grant_owner
        )
        encrypted = self.box.encrypt(data.client_secret)
        with tenant_scope(tenant_id):
            connection = SsoConnection(
                id=new_id("sso"),
                tenant_id=tenant_id,
                name=data.name,
                issuer=data.issuer,
                client_id=data.client_id,
                client_secret_encrypted=encrypted,
                scopes=list(dict.fromkeys(data.scopes)),
                allowed_domains=[],
                role_claim=data.role_claim,
                role_mapping=dict(data.role_mapping),
                default_role=data.default_role,
                enforce_sso=data.enforce_sso,
                enabled=data.enabled,
                created_by=actor_id,
            )
            self.db.add(connection)
            await self.db.flush()
            await self._claim_domains(connection, data.allowed_domains)
            self.audit.record(
                "sso_connection.created",
                tenant_id=tenant_id,
                target_type="sso_connection",
                target_id=connection.id,
                details=self._audit_details(connection),
            )
            await self._commit_domains()
            return self._view(connection)

    @staticmethod
    def _audit_details(connection: SsoConnection, **extra: Any) -> dict[str, Any]:
        return {
            "issuer": connection.issuer,
            "client_id": connection.client_id,
            "allowed_domains": list(connection.allowed_domains),
            "enforce_sso": connection.enforce_sso,
            "enabled": connection.enabled,
            **extra,
        }

    async def list(
        self, tenant_id: str, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> schemas.SsoConnectionPage:
        query = keyset(
            select(SsoConnection).where(SsoConnection.tenant_id == tenant_id),
            SsoConnection.created_at,
            SsoConnection.id,
            cursor,
            newest_first=False,
            limit=limit,
        )
        with tenant_scope(tenant_id):
            rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda c: (c.created_at, c.id))
        return schemas.SsoConnectionPage(items=[self._view(c) for c in rows], next_cursor=next_cursor)

    async def get(self, tenant_id: str, connection_id: str) -> schemas.SsoConnection:
        with tenant_scope(tenant_id):
            return self._view(await self._connection(tenant_id, connection_id))

    async def update(
        self, tenant_id: str, connection_id: str, data: schemas.SsoConnectionUpdate, *, may_grant_owner: bool
    ) -> schemas.SsoConnection:
        with tenant_scope(tenant_id):
            connection = await self._connection(tenant_id, connection_id)
            mapping = data.role_mapping if data.role_mapping is not None else connection.role_mapping
            default_role = data.default_role or connection.default_role
            # An admin may edit a connection an owner set up to grant owner, as long as that part stays.
            owner_grant_unchanged = mapping == connection.role_mapping and default_role == connection.default_role
            self._check_config(
                data.issuer,
                data.scopes or connection.scopes,
                mapping,
                default_role,
                may_grant_owner=may_grant_owner or owner_grant_unchanged,
            )
            changed: list[str] = []
            for name in ("name", "issuer", "client_id", "default_role", "enforce_sso", "enabled"):
                value = getattr(data, name)
                if value is not None and value != getattr(connection, name):
                    setattr(connection, name, value)
                    changed.append(name)
            if data.scopes is not None:
                connection.scopes = list(dict.fromkeys(data.scopes))
                changed.append("scopes")
            if data.role_claim is not None:
                connection.role_claim = data.role_claim or None
                changed.append("role_claim")
            if data.role_mapping is not None:
                connection.role_mapping = dict(data.role_mapping)
                changed.append("role_mapping")
            if data.client_secret is not None:
                connection.client_secret_encrypted = self.box.encrypt(data.client_secret)
                changed.append("client_secret")
            if data.allowed_domains is not None:
                await self._claim_domains(connection, data.allowed_domains)
                changed.append("allowed_domains")
            if data.enabled is False:
                # Disabling ends the sessions it opened (they would be refused at their next use anyway).
                await self._end_sessions(connection.id)
            connection.updated_at = utcnow()
            self.audit.record(
                "sso_connection.updated",
                tenant_id=tenant_id,
                target_type="sso_connection",
                target_id=connection.id,
                details=self._audit_details(connection, changed=sorted(set(changed))),
            )
            await self._commit_domains()
            return self._view(connection)

    async def _end_sessions(self, connection_id: str) -> int:
        sessions = select(SsoSession.session_id).where(SsoSession.connection_id == connection_id)
        ids = (await self.db.scalars(sessions)).all()
        if ids:
            await self.db.execute(delete(UserSession).where(UserSession.id.in_(ids)))
        return len(ids)

    async def delete(self, tenant_id: str, connection_id: str) -> None:
        with tenant_scope(tenant_id):
            connection = await self._connection(tenant_id, connection_id)
            ended = await self._end_sessions(connection.id)
            await self.db.delete(connection)
            self.audit.record(
                "sso_connection.deleted",
                tenant_id=tenant_id,
                target_type="sso_connection",
                target_id=connection.id,
                details=self._audit_details(connection, sessions_ended=ended),
            )
            await self.db.commit()

    async def test(self, tenant_id: str, connection_id: str) -> schemas.SsoConnectionTest:
        """Fetch the discovery document and the keys, fresh; record the outcome on the connection."""
        with tenant_scope(tenant_id):
            connection = await self._connection(tenant_id, connection_id)
        now = utcnow()
        result: schemas.SsoConnectionTest
        try:
            metadata = await self.oidc.metadata(connection.issuer, refresh=True)
            keys = await self.oidc.keys(metadata.jwks_uri, refresh=True)
            self.box.decrypt(connection.client_secret_encrypted)
            result = schemas.SsoConnectionTest(
                ok=True,
                checked_at=now,
                authorization_endpoint=metadata.authorization_endpoint,
                token_endpoint=metadata.token_endpoint,
                jwks_uri=metadata.jwks_uri,
                signing_algorithms=list(metadata.id_token_signing_alg_values_supported),
                key_ids=[str(key.kid) for key in keys],
            )
        except AppError as exc:
            result = schemas.SsoConnectionTest(ok=False, checked_at=now, error_code=exc.code, detail=exc.detail)
        with tenant_scope(tenant_id):
            connection.last_tested_at = now
            connection.last_test_ok = result.ok
            self.audit.record(
                "sso_connection.tested",
                tenant_id=tenant_id,
                target_type="sso_connection",
                target_id=connection.id,
                details={"ok": result.ok, "error_code": result.error_code},
            )
            await self.db.commit()
        return result

    # --- discovery and start -------------------------------------------------------------------

    async def connection_for_email(self, email: str) -> SsoConnection | None:
        domain = email_domain(normalize_email(email))
        if not domain:
            return None
        with dangerously_unscoped():  # the email is all we know yet; the domain picks the tenant
            return await self.db.scalar(
                select(SsoConnection)
                .join(SsoDomain, SsoDomain.connection_id == SsoConnection.id)
                .join(Tenant, Tenant.id == SsoConnection.tenant_id)
                .where(SsoDomain.domain == domain, SsoConnection.enabled.is_(True), Tenant.status == "active")
            )

    async def discover(self, email: str) -> schemas.SsoDiscovery:
        connection = await self.connection_for_email(email)
        if connection is None:
            return schemas.SsoDiscovery(method="password")
        query = urlencode({"email": normalize_email(email)})
        return schemas.SsoDiscovery(method="sso", start_url=f"{self.settings.base_url}{START_PATH}?{query}")

    async def start(self, *, email: str | None, connection_id: str | None, return_to: str | None, binding: str) -> str:
        """Begin a sign-in: keep state, nonce and PKCE verifier server-side, bound to the browser; return the
        provider's authorization URL."""
        if connection_id:
            with dangerously_unscoped():
                connection = await self.db.scalar(
                    select(SsoConnection)
                    .join(Tenant, Tenant.id == SsoConnection.tenant_id)
                    .where(
                        SsoConnection.id == connection_id,
                        SsoConnection.enabled.is_(True),
                        Tenant.status == "active",
                    )
                )
        elif email:
            connection = await self.connection_for_email(email)
        else:
            raise ValidationFailed("Give the `email` to sign in with, or a `connection_id`.", code="sso_email_required")
        if connection is None:
            raise NotFound(
                "No single sign-on is set up for this email; sign in with your password.",
                code="sso_connection_not_found",
            )
        metadata = await self.oidc.metadata(connection.issuer)
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        record = {
            "connection_id": connection.id,
            "tenant_id": connection.tenant_id,
            "nonce": nonce,
            "verifier": verifier,
            "binding": _digest(binding),
            "return_to": safe_return_to(return_to),
            "started_at": utcnow().timestamp(),
        }
        ttl = self.settings.sso_login_ttl_seconds
        await self.runtime.kv.set(f"sso:login:{_digest(state)}", json.dumps(record), ttl=ttl)
        return self.oidc.authorization_url(
            metadata,
            client_id=connection.client_id,
            redirect_uri=self.redirect_uri,
            scopes=list(connection.scopes),
            state=state,
            nonce=nonce,
            code_challenge=challenge,
            login_hint=normalize_email(email) if email else None,
        )

    # --- finish --------------------------------------------------------------------------------

    async def _take_state(self, state: str | None) -> dict[str, Any]:
        refused = NotAuthenticated(
            "This sign-in link is unknown, expired, already used or was started in another browser; start again.",
            code="sso_invalid_state",
        )
        if not state or len(state) > 200:
            raise refused
        key = f"sso:login:{_digest(state)}"
        raw = await self.runtime.kv.get(key)
        if raw is None:
            raise refused
        # One finish per state, even when two requests race: the first to count wins.
        ttl = float(self.settings.sso_login_ttl_seconds)
        if await self.runtime.kv.incr(f"{key}:taken", ttl=ttl) != 1:
            raise refused
        await self.runtime.kv.delete(key)
        return dict(json.loads(raw))

    async def finish(
        self,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        binding: str | None,
        source_ip: str | None,
        user_agent: str | None,
    ) -> SignedIn:
        record: dict[str, Any] | None = None
        try:
            record = await self._take_state(state)
            if not binding or not secrets.compare_digest(_digest(binding), record["binding"]):
                raise NotAuthenticated(
                    "This sign-in was started in another browser; start again here.", code="sso_invalid_state"
                )
            if error:
                raise NotAuthenticated(
                    f"The identity provider did not sign you in ({error[:100]}).", code="sso_provider_error"
                )
            if not code:
                raise ValidationFailed("The callback carries no `code`.", code="sso_code_missing")
            session = await self._sign_in(record, code, source_ip=source_ip, user_agent=user_agent)
            return SignedIn(session=session, return_to=record["return_to"])
        except AppError as exc:
            await self.db.rollback()
            tenant_id = record["tenant_id"] if record else None
            with dangerously_unscoped():
                self.db.add(
                    build_entry(
                        "sso.sign_in_failed",
                        tenant_id=tenant_id,
                        target_type="sso_connection",
                        target_id=record["connection_id"] if record else None,
                        outcome="denied" if exc.status_code in (401, 403) else "failure",
                        status_code=exc.status_code,
                        details={"code": exc.code},
                    )
                )
                await self.db.commit()
            raise

    async def _load_connection(self, record: dict[str, Any]) -> tuple[SsoConnection, Tenant]:
        with dangerously_unscoped():
            row = (
                await self.db.execute(
                    select(SsoConnection, Tenant)
                    .join(Tenant, Tenant.id == SsoConnection.tenant_id)
                    .where(SsoConnection.id == record["connection_id"])
                )
            ).first()
        if row is None or not row[0].enabled:
            raise NotAuthenticated("This SSO connection was removed or disabled.", code="sso_connection_disabled")
        if row[1].status != "active":
            raise PermissionDenied("This tenant is not active; contact Livora support.", code="tenant_suspended")
        return row[0], row[1]

    async def _email(self, claims: dict[str, Any], metadata: ProviderMetadata, access_token: str | None) -> str:
        email, verified = claims.get("email"), claims.get("email_verified")
        if not isinstance(email, str) and metadata.userinfo_endpoint and access_token:
            # Some providers keep the email out of the ID token; the UserInfo answer counts only for the same sub.
            info = await self._userinfo(metadata.userinfo_endpoint, access_token)
            if info.get("sub") == claims["sub"]:
                email, verified = info.get("email"), info.get("email_verified")
        if not isinstance(email, str) or "@" not in email:
            raise NotAuthenticated(
                "The identity provider sent no email address; add the `email` scope.", code="sso_email_missing"
            )
        if verified is False or verified == "false":
            raise PermissionDenied("The identity provider has not verified this email.", code="sso_email_unverified")
        return normalize_email(email)

    async def _userinfo(self, url: str, access_token: str) -> dict[str, Any]:
        check_url(url, allow_local=self.settings.sso_allow_local_issuers, what="userinfo_endpoint")
        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
                response = await client.get(url, headers={"Authorization": f"Bearer {access_token}"})
            body = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            body = {}
        return body if isinstance(body, dict) else {}

    async def _sign_in(
        self, record: dict[str, Any], code: str, *, source_ip: str | None, user_agent: str | None
    ) -> identity_schemas.SessionToken:
        connection, tenant = await self._load_connection(record)
        with tenant_scope(tenant.id):
            metadata = await self.oidc.metadata(connection.issuer)
            tokens = await self.oidc.exchange_code(
                metadata,
                client_id=connection.client_id,
                client_secret=self.box.decrypt(connection.client_secret_encrypted),
                code=code,
                redirect_uri=self.redirect_uri,
                code_verifier=record["verifier"],
            )
            claims = await self.oidc.verify_id_token(
                tokens.id_token,
                metadata,
                client_id=connection.client_id,
                nonce=record["nonce"],
                max_age_seconds=self.settings.sso_login_ttl_seconds,
            )
            email = await self._email(claims, metadata, tokens.access_token)
            if email_domain(email) not in connection.allowed_domains:
                raise PermissionDenied(
                    "Your email's domain is not one this organisation signs in with SSO.",
                    code="sso_email_domain_not_allowed",
                )
            user, created = await self._user_for(connection, claims, email)
            role, matched = mapped_role(connection, claims)
            await self._ensure_membership(connection, user, role, matched, first_link=created)
            session, token = self.identity.stage_session(user, source_ip=source_ip, user_agent=user_agent)
            await self.db.flush()
            with tenant_scope(tenant.id):
                self.db.add(
                    SsoSession(session_id=session.id, tenant_id=tenant.id, connection_id=connection.id, user_id=user.id)
                )
                self.audit.record(
                    "session.created",
                    tenant_id=tenant.id,
                    target_type="user",
                    target_id=user.id,
                    details={"method": "sso", "connection_id": connection.id, "subject": claims["sub"]},
                )
                try:
                    await self.db.commit()
                except IntegrityError:
                    await self.db.rollback()
                    raise Conflict("This account was created concurrently; sign in again.", code="sso_retry") from None
            return identity_schemas.SessionToken(token=token, expires_at=session.expires_at, user=user_view(user))

    async def _user_for(self, connection: SsoConnection, claims: dict[str, Any], email: str) -> tuple[User, bool]:
        """The user for (issuer, sub); linked or created on the first sign-in through this connection.

        Returns the user and whether this connection first met them now.
        """
        subject: str = claims["sub"]
        with tenant_scope(connection.tenant_id):
            identity = await self.db.scalar(
                select(SsoIdentity).where(SsoIdentity.connection_id == connection.id, SsoIdentity.subject == subject)
            )
        if identity is not None:
            user = await self.db.get(User, identity.user_id)
            if user is None or not user.is_active:
                raise PermissionDenied(
                    "This account is disabled; contact your administrator.", code="sso_user_disabled"
                )
            identity.last_login_at = utcnow()
            identity.email = email
            return user, False
        with dangerously_unscoped():  # the same person at the same issuer, met through another tenant's connection
            user_id = await self.db.scalar(
                select(SsoIdentity.user_id)
                .where(SsoIdentity.issuer == connection.issuer, SsoIdentity.subject == subject)
                .limit(1)
            )
        user = await self.db.get(User, user_id) if user_id else None
        if user is None:
            user = await self.db.scalar(select(User).where(User.email == email))
            if user is not None and not await self._may_link_by_email(user, connection.tenant_id):
                raise Conflict(
                    "An account with this email already exists outside this organisation; ask its administrator "
                    "to invite you, or sign in with your password.",
                    code="sso_account_conflict",
                )
        if user is not None and not user.is_active:
            raise PermissionDenied("This account is disabled; contact your administrator.", code="sso_user_disabled")
        if user is None:
            name = claims.get("name") if isinstance(claims.get("name"), str) else ""
            user = User(id=new_id("usr"), email=email, name=(name or "")[:200], is_active=True)
            self.db.add(user)
            await self.db.flush()
        now = utcnow()
        with tenant_scope(connection.tenant_id):
            self.db.add(
                SsoIdentity(
                    id=new_id("sid"),
                    tenant_id=connection.tenant_id,
                    connection_id=connection.id,
                    user_id=user.id,
                    issuer=connection.issuer,
                    subject=subject,
                    email=email,
                    created_at=now,
                    last_login_at=now,
                )
            )
            await self.db.flush()
        return user, True

    async def _may_link_by_email(self, user: User, tenant_id: str) -> bool:
        """An existing password account joins SSO only when this tenant alone vouches for it: no platform
        role and no membership elsewhere. Otherwise a tenant's provider could take over another tenant's
        (or Livora staff's) account by asserting its email."""
        if user.platform_role is not None:
            return False
        with dangerously_unscoped():
            elsewhere = await self.db.scalar(
                select(func.count(Membership.id)).where(
                    Membership.user_id == user.id, Membership.tenant_id != tenant_id
                )
            )
        return not elsewhere

    async def _ensure_membership(
        self, connection: SsoConnection, user: User, role: str, matched: bool, *, first_link: bool
    ) -> None:
        tenant_id = connection.tenant_id
        with tenant_scope(tenant_id):
            membership = await self.db.scalar(
                select(Membership).where(Membership.tenant_id == tenant_id, Membership.user_id == user.id)
            )
            if membership is None:
                if not first_link:
                    # Known through this connection before and since removed: removal sticks until re-invited.
                    raise PermissionDenied(
                        "You were removed from this organisation; ask an administrator to invite you again.",
                        code="sso_user_removed",
                    )
                self.db.add(Membership(id=new_id("mem"), tenant_id=tenant_id, user_id=user.id, role=role))
                self.audit.record(
                    "member.added",
                    tenant_id=tenant_id,
                    target_type="user",
                    target_id=user.id,
                    details={"role": role, "via": "sso", "connection_id": connection.id},
                )
                await self.db.flush()
                return
            if not matched or membership.role == role:
                return
            if membership.role == "owner":
                owners = await self.db.scalar(
                    select(func.count(Membership.id)).where(
                        Membership.tenant_id == tenant_id, Membership.role == "owner"
                    )
                )
                if (owners or 0) <= 1:
                    return  # a tenant keeps its last owner whatever the provider says
            before, membership.role = membership.role, role
            self.audit.record(
                "member.role_changed",
                tenant_id=tenant_id,
                target_type="user",
                target_id=user.id,
                details={"from": before, "to": role, "via": "sso", "connection_id": connection.id},
            )
            await self.db.flush()


def session_cookie_max_age(expires_at: dt.datetime) -> int:
    return max(1, int((expires_at - utcnow()).total_seconds()))
