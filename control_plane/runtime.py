"""What the control plane runs on (built once) and the services over one DB session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from billing.payments import payment_drivers
from billing.payments.port import PaymentGateway
from billing.service import BillingService
from control_plane.analytics.keys import public_keys
from control_plane.api_keys.service import ApiKeyService
from control_plane.audit.service import AuditService
from control_plane.billing.service import build_billing, catalog_for
from control_plane.cells.service import CellConfigService, CellService
from control_plane.identity.secrets import Passwords
from control_plane.identity.service import IdentityService
from control_plane.memberships.service import MembershipService
from control_plane.provisioning.service import Provisioner, ProvisioningService
from control_plane.rbac.authorizer import Authorizer, default_authorizer
from control_plane.settings import Settings
from control_plane.sources.service import SourceService
from control_plane.sso.crypto import SecretBox, secret_box
from control_plane.sso.oidc import OidcClient
from control_plane.sso.service import SsoService
from control_plane.tenants.service import TenantService
from kernel.db import create_engine, create_sessionmaker
from kernel.ports.jobs import JobQueue, jobs_drivers
from kernel.ports.kv import KeyValueStore, kv_drivers
from kernel.ports.mail import Mailer, mail_drivers
from kernel.tenancy import install_tenant_guard


@dataclass
class Runtime:
    """Long-lived resources: engine, drivers, policy. One per process."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    kv: KeyValueStore
    mailer: Mailer
    authorizer: Authorizer
    passwords: Passwords
    payments: PaymentGateway

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Create drivers from settings; an unknown driver name raises ``ConfigError`` here, at start-up."""
        install_tenant_guard()
        kv = kv_drivers.create(
            settings.kv_driver, redis_url=settings.redis_url or None, prefix=f"{settings.kv_prefix}cp:"
        )
        mailer = mail_drivers.create(
            settings.mail_driver,
            outbox_path=settings.outbox_path,
            sender=settings.mail_from,
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_username=settings.smtp_username or None,
            smtp_password=settings.smtp_password or None,
            smtp_starttls=settings.smtp_starttls,
        )
        engine = create_engine(settings.database_url)
        catalog_for(settings.billing_catalog_path)  # a bad plan catalog stops start-up, not the first invoice
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            kv=kv,
            mailer=mailer,
            authorizer=default_authorizer(),
            passwords=Passwords(settings.argon2_time_cost, settings.argon2_memory_kib),
            payments=payment_drivers.create(
                settings.billing_payments_driver,
                stripe_api_key=settings.stripe_api_key,
                stripe_webhook_secret=settings.stripe_webhook_secret,
                stripe_api_base=settings.stripe_api_base,
            ),
        )

    @cached_property
    def oidc(self) -> OidcClient:
        """OpenID Connect client; its discovery and key caches live as long as the process."""
        return OidcClient(
            allow_local=self.settings.sso_allow_local_issuers,
            jwks_refresh_seconds=self.settings.sso_jwks_refresh_seconds,
        )

    @cached_property
    def cell_token_keys(self) -> list[str]:
        """Public keys cells verify analytics tokens with (see ``control_plane.analytics.keys``)."""
        return public_keys(self.settings)

    @cached_property
    def secret_box(self) -> SecretBox:
        """Encryption of stored secrets; raises ``ConfigError`` (on use, not at start) when no key can be had."""
        return secret_box(self.settings)

    @cached_property
    def jobs(self) -> JobQueue:
        """Background jobs: in-process (memory) or shared through Redis."""
        return jobs_drivers.create(
            self.settings.jobs_driver, redis_url=self.settings.redis_url or None, prefix=f"{self.settings.kv_prefix}cp:"
        )

    @cached_property
    def provisioner(self) -> Provisioner:
        """Executes provisioning runs (started with the app: ``await runtime.provisioner.start()``)."""
        return Provisioner(self.settings, self.sessionmaker, self.jobs, lambda db: Services(self, db))

    async def close(self) -> None:
        if "provisioner" in self.__dict__:
            await self.provisioner.close()
        await self.payments.close()
        await self.mailer.close()
        await self.kv.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def services(self) -> AsyncIterator[Services]:
        """Services over a fresh session; HTTP handlers, the CLI and tests all enter here."""
        async with self.sessionmaker() as session:
            yield Services(self, session)


class Services:
    """The domain services sharing one DB session (one unit of work)."""

    def __init__(self, runtime: Runtime, db: AsyncSession) -> None:
        self.runtime = runtime
        self.db = db

    @cached_property
    def audit(self) -> AuditService:
        return AuditService(self.db)

    @cached_property
    def identity(self) -> IdentityService:
        r = self.runtime
        return IdentityService(self.db, r.settings, r.passwords, r.kv, r.mailer, self.audit)

    @cached_property
    def tenants(self) -> TenantService:
        return TenantService(self.db, self.audit, self.identity)

    @cached_property
    def members(self) -> MembershipService:
        return MembershipService(self.db, self.audit)

    @cached_property
    def cells(self) -> CellConfigService:
        return CellConfigService(self.db, self.billing, token_keys=self.runtime.cell_token_keys)

    @cached_property
    def sources(self) -> SourceService:
        return SourceService(self.db, self.audit, self.runtime.settings.api_key_max_grace_seconds)

    @cached_property
    def sso(self) -> SsoService:
        return SsoService(self.db, self.runtime, self.audit, self.identity)

    @cached_property
    def billing(self) -> BillingService:
        return build_billing(self.db, self.audit, self.runtime)

    @cached_property
    def api_keys(self) -> ApiKeyService:
        return ApiKeyService(self.db, self.audit, self.runtime.settings.api_key_max_grace_seconds)

    @cached_property
    def cell_registry(self) -> CellService:
        settings = self.runtime.settings
        return CellService(
            self.db, self.audit, heartbeat_seconds=settings.cell_heartbeat_seconds, master_secret=settings.cell_secret
        )

    @cached_property
    def provisioning(self) -> ProvisioningService:
        return ProvisioningService(self.db, self.runtime.provisioner, self.runtime.settings)
