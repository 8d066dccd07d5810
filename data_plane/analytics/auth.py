"""Who may read a tenant's analytics on this cell: tenant API keys with an analytics scope, and people
holding a cell token the control plane signed. Both are checked against the cell's last pulled config,
so the API keeps answering while the control plane is down. The tenant always comes from the credential."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from data_plane.contract.keeper import ConfigKeeper
from data_plane.contract.schemas import ApiKeyGrant, CellConfig, TenantConfig
from data_plane.contract.tokens import ANALYTICS_ROLES, TOKEN_PREFIX, verify
from kernel.errors import NotAuthenticated, PermissionDenied

SCOPE = "analytics:read"


@dataclass(frozen=True)
class Reader:
    """The authenticated caller: which tenant (from the credential), and who."""

    tenant: TenantConfig
    kind: Literal["api_key", "user"]
    id: str
    role: str | None = None


class AnalyticsAuth:
    def __init__(
        self, keeper: ConfigKeeper, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    ) -> None:
        self.keeper = keeper
        self.clock = clock
        self._version: str | None = None
        self._keys: dict[str, tuple[TenantConfig, ApiKeyGrant]] = {}
        self._tenants: dict[str, TenantConfig] = {}

    def _index(self) -> CellConfig:
        config = self.keeper.config
        if config.version != self._version:
            keys: dict[str, tuple[TenantConfig, ApiKeyGrant]] = {}
            for tenant in config.tenants:
                for grant in tenant.api_keys:
                    for digest in grant.secret_hashes:
                        keys[digest] = (tenant, grant)
            self._keys = keys
            self._tenants = {tenant.id: tenant for tenant in config.tenants}
            self._version = config.version
        return config

    def authenticate(self, authorization: str | None) -> Reader:
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise NotAuthenticated(
                "Send `Authorization: Bearer <API key with analytics:read>` or a cell token from the control plane.",
                code="missing_credential",
            )
        config = self._index()
        now = self.clock()
        if credential.startswith(f"{TOKEN_PREFIX}_"):
            claims = verify(credential, config.token_keys, now.timestamp())
            tenant = self._tenants.get(claims.tenant_id) if claims else None
            if claims is None or tenant is None:
                raise NotAuthenticated("The cell token is invalid or has expired.", code="invalid_token")
            if claims.role not in ANALYTICS_ROLES:
                raise PermissionDenied("Your role does not allow reading analytics.", code="permission_denied")
            return self._active(Reader(tenant, "user", claims.sub, claims.role))
        digest = hashlib.sha256(credential.encode()).hexdigest()
        found = self._keys.get(digest)
        if found is None or not _usable(found[1], digest, now):
            raise NotAuthenticated("The API key is unknown, revoked or expired.", code="invalid_api_key")
        tenant, grant = found
        if SCOPE not in grant.scopes:
            raise PermissionDenied(f"The API key lacks the `{SCOPE}` scope.", code="permission_denied")
        return self._active(Reader(tenant, "api_key", grant.id))

    @staticmethod
    def _active(reader: Reader) -> Reader:
        status = reader.tenant.status
        if status == "suspended":
            raise PermissionDenied("This workspace is suspended.", code="tenant_suspended")
        if status != "active":
            raise PermissionDenied(f"This workspace is {status}.", code="tenant_not_active")
        return reader


def _usable(grant: ApiKeyGrant, digest: str, now: dt.datetime) -> bool:
    if grant.expires_at is not None and grant.expires_at <= now:
        return False
    if grant.previous_secret_hash is not None and hmac.compare_digest(digest, grant.previous_secret_hash):
        # A rotated-out secret stops at the end of its grace even if no newer config arrived.
        return grant.previous_valid_until is not None and grant.previous_valid_until > now
    return True
