"""The role-by-route permission matrix: who may call every control-plane route, and what everyone else gets."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from billing.models import Subscription as BillingSubscription
from control_plane.api_keys.schemas import ApiKeyCreate
from control_plane.cells.models import TenantPlacement
from control_plane.cells.schemas import CellCreate
from control_plane.db.models import Invite, Membership, Tenant, User
from control_plane.identity.models import PasswordReset
from control_plane.identity.secrets import new_token, token_hash
from control_plane.sources.schemas import SourceCreate
from control_plane.sso.models import SsoConnection
from kernel.db import new_id, utcnow
from kernel.tenancy import tenant_scope
from provisioning.models import ProvisioningStep
from tests.support.world import PASSWORD, Actor, World

# --- the specification ---------------------------------------------------------------------
#
# Written by hand from what the product promises (route docstrings, the README of roles),
# deliberately not computed from policy.csv: a policy edit that widens or narrows access
# must show up here as a failing row.

OPS = frozenset({"ops_admin", "ops_viewer"})
PLATFORM = OPS | {"finance"}
A_ROLES = frozenset({"a:owner", "a:admin", "a:analyst", "a:marketer", "a:sales", "a:viewer"})
A_MANAGERS = frozenset({"a:owner", "a:admin"})
A_KEYS = frozenset({"a:key_all", "a:key_read_tenant"})
USERS = PLATFORM | A_ROLES | {"outsider"}
AUTHENTICATED = USERS | A_KEYS
EVERYONE = AUTHENTICATED | {"anonymous"}
ADMIN_ONLY = frozenset({"ops_admin"})

MATRIX: dict[str, frozenset[str]] = {
    # Public.
    "Health": EVERYONE,
    "Ready": EVERYONE,
    "Login": EVERYONE,
    "AcceptInvite": EVERYONE,
    # Any signed-in caller; sessions and passwords belong to people, not keys.
    "GetMe": AUTHENTICATED,
    "ListTenants": AUTHENTICATED,
    "Logout": USERS,
    "ChangePassword": USERS,
    "ListMySessions": USERS,
    # Only one's own session can be revoked: the prepared one is nobody's, so everyone gets 404 (or 403/401).
    "RevokeMySession": frozenset(),
    "ForgotPassword": EVERYONE,
    "ResetPassword": EVERYONE,
    # Users and platform invitations: Livora staff.
    "ListUsers": OPS,
    "GetUser": OPS,
    "UpdateUser": ADMIN_ONLY,
    "ListPlatformInvites": OPS,
    "CreatePlatformInvite": ADMIN_ONLY,
    "RevokePlatformInvite": ADMIN_ONLY,
    "ListAuditEntries": OPS,
    # Tenants: everyone who belongs may read; only ops_admin changes a tenant or its lifecycle.
    "CreateTenant": ADMIN_ONLY,
    "GetTenant": PLATFORM | A_ROLES | A_KEYS,
    "UpdateTenant": ADMIN_ONLY,
    "ProvisionTenant": ADMIN_ONLY,
    "SuspendTenant": ADMIN_ONLY,
    "ReactivateTenant": ADMIN_ONLY,
    "DeleteTenant": ADMIN_ONLY,
    # Members: every member sees the team; owners and admins manage it.
    "ListMembers": OPS | A_ROLES | {"a:key_all"},
    "GetMember": OPS | A_ROLES | {"a:key_all"},
    "UpdateMember": ADMIN_ONLY | A_MANAGERS,
    "RemoveMember": ADMIN_ONLY | A_MANAGERS,
    # Invitations, API keys and the tenant's audit trail: owners and admins.
    "ListInvites": OPS | A_MANAGERS | {"a:key_all"},
    "CreateInvite": ADMIN_ONLY | A_MANAGERS,
    "RevokeInvite": ADMIN_ONLY | A_MANAGERS,
    "ListApiKeys": OPS | A_MANAGERS | {"a:key_all"},
    "GetApiKey": OPS | A_MANAGERS | {"a:key_all"},
    "CreateApiKey": ADMIN_ONLY | A_MANAGERS,
    "RotateApiKey": ADMIN_ONLY | A_MANAGERS,
    "RevokeApiKey": ADMIN_ONLY | A_MANAGERS,
    "ListTenantAuditEntries": OPS | A_MANAGERS | {"a:key_all"},
    # Analytics tokens for the tenant's cell: people with the analyst role or higher (keys call the cell directly).
    "CreateAnalyticsToken": OPS | {"a:owner", "a:admin", "a:analyst"},
    # Sources: every member sees them (no secrets after creation); owners and admins manage them.
    "ListSources": OPS | A_ROLES | {"a:key_all"},
    "GetSource": OPS | A_ROLES | {"a:key_all"},
    "CreateSource": ADMIN_ONLY | A_MANAGERS,
    "UpdateSource": ADMIN_ONLY | A_MANAGERS,
    "RotateWriteKey": ADMIN_ONLY | A_MANAGERS,
    "RevokeSource": ADMIN_ONLY | A_MANAGERS,
    # SSO connections: owners and admins configure their tenant's identity provider; staff may read them.
    "ListSsoConnections": OPS | A_MANAGERS,
    "GetSsoConnection": OPS | A_MANAGERS,
    "CreateSsoConnection": ADMIN_ONLY | A_MANAGERS,
    "UpdateSsoConnection": ADMIN_ONLY | A_MANAGERS,
    "DeleteSsoConnection": ADMIN_ONLY | A_MANAGERS,
    "TestSsoConnection": ADMIN_ONLY | A_MANAGERS,
    # The sign-in page asks how an email signs in before anyone is signed in.
    "DiscoverSso": EVERYONE,
    # For data-plane cells and their credential only: no person or API key, however privileged.
    "GetCellConfig": frozenset(),
    # Billing: finance and ops admins act on every tenant's invoices (ops_viewer reads everything);
    # a tenant's owners and admins read their own invoices and usage; plans and tax are finance's.
    **{op: PLATFORM for op in ("ListPlans", "ListAllInvoices", "GetAnyInvoice", "RenderAnyInvoice")},
    **{op: PLATFORM for op in ("ExportInvoices", "ExportInvoiceLines", "GetRevenue")},
    **{op: ADMIN_ONLY | {"finance"} for op in ("RefreshDraftInvoice", "FinalizeInvoice", "VoidInvoice")},
    **{op: ADMIN_ONLY | {"finance"} for op in ("MarkInvoiceUncollectible", "RecordInvoicePayment", "CreateCreditNote")},
    **{op: ADMIN_ONLY | {"finance"} for op in ("ClosePeriod", "UpdateBillingAccount", "ChangePlan")},
    **{op: PLATFORM | A_MANAGERS for op in ("GetBillingAccount", "ListInvoices", "GetInvoice", "RenderInvoice")},
    "GetUsage": PLATFORM | A_MANAGERS,
    "GetDraftInvoice": PLATFORM | A_MANAGERS,
    "ReportUsage": frozenset(),
    "ReceiveStripeWebhook": frozenset(),
    # Provisioning runs and cells: Livora staff; ops_admin acts. A Pattern A tenant's owners and admins
    # read the trust policy their role must carry.
    **{op: OPS for op in ("ListCells", "GetCell", "ListProvisioningRuns", "GetProvisioningRun")},
    **{op: OPS for op in ("ListTenantProvisioningRuns", "GetTenantPlacement")},
    **{op: ADMIN_ONLY for op in ("RegisterCell", "UpdateCell", "RotateCellCredential")},
    **{op: ADMIN_ONLY for op in ("RetryProvisioningRun", "RollBackProvisioningRun", "UpgradeTenantTemplate")},
    "GetTrustPolicy": OPS | A_MANAGERS,
}
BILLING_FINANCE_OPS = frozenset(
    op
    for op, allowed in MATRIX.items()
    if "finance" in allowed
    and allowed < EVERYONE
    and op not in ("GetMe", "ListTenants", "Logout", "ChangePassword", "ListMySessions", "GetTenant")
)

# Denials that are not the generic 403 `permission_denied` (beyond 401 for anonymous callers
# and 404 `tenant_not_found` for callers outside tenant A on tenant routes).
DENIAL_OVERRIDES: dict[tuple[str, str], tuple[int, str]] = {
    **{("Logout", key): (403, "not_a_session") for key in A_KEYS},
    **{("ChangePassword", key): (403, "not_a_session") for key in A_KEYS},
    **{("ListMySessions", key): (403, "not_a_session") for key in A_KEYS},
    **{("RevokeMySession", key): (403, "not_a_session") for key in A_KEYS},
    **{("RevokeMySession", name): (404, "session_not_found") for name in USERS},
    **{("GetCellConfig", name): (401, "invalid_cell_credential") for name in EVERYONE},
    **{("ReportUsage", name): (401, "invalid_cell_credential") for name in EVERYONE},
    # Only the payment provider's signature opens it (the embedded driver takes no webhooks at all).
    **{("ReceiveStripeWebhook", name): (401, "invalid_webhook_signature") for name in EVERYONE},
    # Reactivation needs a suspended tenant, and a suspended tenant refuses its own people and keys.
    **{("ReactivateTenant", name): (403, "tenant_suspended") for name in A_ROLES | A_KEYS},
}

NEW_PASSWORD = "a different passphrase, long enough"


# --- preparing a fresh, valid target for every call ------------------------------------------


@dataclass
class Call:
    """What one request needs besides its principal: path parameters and a body."""

    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    query: dict[str, str] = field(default_factory=dict)


class Env:
    """Prepares targets directly through the services, on the test thread's runtime."""

    def __init__(self, world: World, aio: Callable[[Awaitable[Any]], Any]) -> None:
        self.world = world
        self.aio = aio
        self.a = world.a.id

    def _run(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        async def run() -> Any:
            async with self.world.runtime.services() as services:
                return await work(services)

        return self.aio(run())

    @staticmethod
    def email() -> str:
        return f"target-{uuid.uuid4().hex[:10]}@example.com"

    def user(self) -> str:
        async def work(services: Any) -> str:
            user = User(id=new_id("usr"), email=self.email(), name="target")
            services.db.add(user)
            await services.db.commit()
            return user.id

        return str(self._run(work))

    def member(self, role: str = "viewer", tenant_id: str | None = None) -> str:
        tenant_id = tenant_id or self.a
        user_id = self.user()

        async def work(services: Any) -> None:
            with tenant_scope(tenant_id):
                services.db.add(Membership(id=new_id("mem"), tenant_id=tenant_id, user_id=user_id, role=role))
                await services.db.commit()

        self._run(work)
        return user_id

    def invite(self, tenant_id: str | None = None, role: str = "viewer") -> str:
        async def work(services: Any) -> str:
            invite = await services.identity.invite(tenant_id, self.email(), role, None)
            return str(invite.id)

        return str(self._run(work))

    def reset_token(self) -> str:
        """A fresh password-reset code for a user of its own (the service only mails it)."""
        token = new_token("lvr")
        user_id = self.user()

        async def work(services: Any) -> None:
            services.db.add(
                PasswordReset(
                    id=new_id("pwr"),
                    user_id=user_id,
                    token_hash=token_hash(token),
                    expires_at=utcnow() + dt.timedelta(minutes=30),
                )
            )
            await services.db.commit()

        self._run(work)
        return token

    def invite_token(self) -> str:
        """A pending tenant-A invitation whose code we know (the service only mails it)."""
        token = new_token("lvi")

        async def work(services: Any) -> None:
            with tenant_scope(self.a):
                services.db.add(
                    Invite(
                        id=new_id("inv"),
                        tenant_id=self.a,
                        email=self.email(),
                        role="viewer",
                        token_hash=token_hash(token),
                        created_at=utcnow(),
                        expires_at=utcnow() + dt.timedelta(days=1),
                    )
                )
                await services.db.commit()

        self._run(work)
        return token

    def key(self) -> str:
        async def work(services: Any) -> str:
            created = await services.api_keys.create(self.a, ApiKeyCreate(name="target", scopes=["tenant:read"]), None)  # type: ignore[list-item]
            return str(created.api_key.id)

        return str(self._run(work))

    @staticmethod
    def cell_name() -> str:
        return f"cell-{uuid.uuid4().hex[:10]}"

    def cell(self) -> str:
        async def work(services: Any) -> str:
            created = await services.cell_registry.register(
                CellCreate(name=self.cell_name(), region="eu-west-1", endpoint="http://cell")
            )
            return str(created.cell.id)

        return str(self._run(work))

    def failed_run(self, operation: str, step: str) -> str:
        """A failed run of tenant A whose one step is harmless to run again (its target state holds already)."""

        async def work(services: Any) -> str:
            with tenant_scope(self.a):
                run = services.runtime.provisioner.runner.add_run(
                    services.db,
                    tenant_id=self.a,
                    operation=operation,
                    steps=[step],
                    driver="local",
                    template="ecommerce",
                    template_version=1,
                )
                run.status, run.error = "failed", f"{step}: matrix"
                await services.db.flush()
                await services.db.execute(
                    update(ProvisioningStep)
                    .where(ProvisioningStep.run_id == run.id)
                    .values(status="failed", attempts=5)
                )
                await services.db.commit()
                return str(run.id)

        return str(self._run(work))

    def placed(self) -> str:
        async def work(services: Any) -> None:
            with tenant_scope(self.a):
                if await services.db.get(TenantPlacement, self.a) is None:
                    services.db.add(
                        TenantPlacement(
                            tenant_id=self.a, template="ecommerce", template_version=1, resources={}, starter_content={}
                        )
                    )
                    await services.db.commit()

        self._run(work)
        return self.a

    def pattern_a(self) -> str:
        async def work(services: Any) -> None:
            tenant = await services.db.get(Tenant, self.a)
            tenant.deployment_pattern = "A"
            await services.db.commit()

        self._run(work)
        return self.a

    def source(self) -> str:
        async def work(services: Any) -> str:
            created = await services.sources.create(self.a, SourceCreate(name="target", kind="server"), None)
            return str(created.source.id)

        return str(self._run(work))

    def invoice(self, finalised: bool = True, current: bool = False) -> str:
        """A tenant-A invoice of a month of its own (its plan started long ago), draft or finalised."""
        self.months = getattr(self, "months", 0) + 1
        now = utcnow()
        start = now if current else dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=31 * self.months)

        async def work(services: Any) -> str:
            billing = services.billing
            with tenant_scope(self.a):
                if not await services.db.scalar(select(BillingSubscription.id)):
                    since = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)
                    subscription = BillingSubscription(
                        id=new_id("sub"), tenant_id=self.a, plan="growth", started_at=since
                    )
                    services.db.add(subscription)
                    await services.db.commit()
            draft = await billing.draft(self.a, start, now)
            if finalised:
                await billing.finalize(draft.id, now, push=False)
            return str(draft.id)

        return str(self._run(work))

    def other_plan(self) -> str:
        async def work(services: Any) -> str:
            return "enterprise" if (await services.db.get(Tenant, self.a)).plan != "enterprise" else "growth"

        return str(self._run(work))

    def sso_connection(self) -> str:
        """A tenant-A SSO connection whose issuer is refused before any request leaves (no network in tests)."""

        async def work(services: Any) -> str:
            with tenant_scope(self.a):
                connection = SsoConnection(
                    id=new_id("sso"),
                    tenant_id=self.a,
                    name="target",
                    issuer="https://127.0.0.1:1",
                    client_id="client",
                    client_secret_encrypted=services.runtime.secret_box.encrypt("secret"),
                    scopes=["openid", "email"],
                    allowed_domains=[],
                    role_mapping={},
                    default_role="viewer",
                )
                services.db.add(connection)
                await services.db.commit()
            return connection.id

        return str(self._run(work))

    def tenant_status(self, status: str) -> None:
        async def work(services: Any) -> None:
            tenant = await services.db.get(Tenant, self.a)
            tenant.status = status
            await services.db.commit()

        self._run(work)


def _slug() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _in_status(status: str, json: Any = None) -> Callable[[Env], Call]:
    """Tenant A put in the state the transition starts from."""

    def prepare(env: Env) -> Call:
        env.tenant_status(status)
        return Call(params={"tenant_id": env.a}, json=json)

    return prepare


PREPARE: dict[str, Callable[[Env], Call]] = {
    "Health": lambda env: Call(),
    "Ready": lambda env: Call(),
    "Login": lambda env: Call(json={"email": env.world.outsider.email, "password": PASSWORD}),
    "AcceptInvite": lambda env: Call(json={"token": env.invite_token(), "password": NEW_PASSWORD}),
    "GetMe": lambda env: Call(),
    "ListTenants": lambda env: Call(),
    # Each principal is called once per test, so its own session may end here.
    "Logout": lambda env: Call(),
    "ChangePassword": lambda env: Call(json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    "ListMySessions": lambda env: Call(),
    "RevokeMySession": lambda env: Call(params={"session_id": new_id("ses")}),
    "ForgotPassword": lambda env: Call(json={"email": env.world.outsider.email}),
    "ResetPassword": lambda env: Call(json={"token": env.reset_token(), "new_password": NEW_PASSWORD}),
    "ListUsers": lambda env: Call(),
    "GetUser": lambda env: Call(params={"user_id": env.world.outsider.user_id or ""}),
    "UpdateUser": lambda env: Call(params={"user_id": env.user()}, json={"name": "Renamed"}),
    "ListPlatformInvites": lambda env: Call(),
    "CreatePlatformInvite": lambda env: Call(json={"email": env.email(), "role": "ops_viewer"}),
    "RevokePlatformInvite": lambda env: Call(params={"invite_id": env.invite(None, "ops_viewer")}),
    "ListAuditEntries": lambda env: Call(),
    "CreateTenant": lambda env: Call(json={"name": "Matrix tenant", "slug": _slug()}),
    "GetTenant": lambda env: Call(params={"tenant_id": env.a}),
    "UpdateTenant": lambda env: Call(params={"tenant_id": env.a}, json={"name": "Tenant A renamed"}),
    "ProvisionTenant": _in_status("pending"),
    "SuspendTenant": _in_status("active", {"reason": "matrix"}),
    "ReactivateTenant": _in_status("suspended"),
    "DeleteTenant": _in_status("pending"),
    "ListMembers": lambda env: Call(params={"tenant_id": env.a}),
    "GetMember": lambda env: Call(params={"tenant_id": env.a, "user_id": env.world.a.members["viewer"].user_id or ""}),
    "UpdateMember": lambda env: Call(params={"tenant_id": env.a, "user_id": env.member()}, json={"role": "analyst"}),
    "RemoveMember": lambda env: Call(params={"tenant_id": env.a, "user_id": env.member()}),
    "ListInvites": lambda env: Call(params={"tenant_id": env.a}),
    "CreateInvite": lambda env: Call(params={"tenant_id": env.a}, json={"email": env.email(), "role": "viewer"}),
    "RevokeInvite": lambda env: Call(params={"tenant_id": env.a, "invite_id": env.invite(env.a)}),
    "ListApiKeys": lambda env: Call(params={"tenant_id": env.a}),
    "GetApiKey": lambda env: Call(params={"tenant_id": env.a, "key_id": env.world.a.key_ids["key_read_tenant"]}),
    "CreateApiKey": lambda env: Call(params={"tenant_id": env.a}, json={"name": "new", "scopes": ["tenant:read"]}),
    "RotateApiKey": lambda env: Call(params={"tenant_id": env.a, "key_id": env.key()}),
    "RevokeApiKey": lambda env: Call(params={"tenant_id": env.a, "key_id": env.key()}),
    "ListTenantAuditEntries": lambda env: Call(params={"tenant_id": env.a}),
    "CreateAnalyticsToken": lambda env: Call(params={"tenant_id": env.a}),
    "GetCellConfig": lambda env: Call(),
    **{op: lambda env: Call() for op in ("ListPlans", "ListAllInvoices", "ExportInvoices", "ExportInvoiceLines")},
    **{op: lambda env: Call() for op in ("GetRevenue", "ClosePeriod", "ReportUsage", "ReceiveStripeWebhook")},
    "GetAnyInvoice": lambda env: Call(params={"invoice_id": env.invoice()}),
    "RenderAnyInvoice": lambda env: Call(params={"invoice_id": env.invoice()}),
    "RefreshDraftInvoice": lambda env: Call(params={"invoice_id": env.invoice(finalised=False, current=True)}),
    "FinalizeInvoice": lambda env: Call(params={"invoice_id": env.invoice(finalised=False)}),
    "VoidInvoice": lambda env: Call(params={"invoice_id": env.invoice()}),
    "MarkInvoiceUncollectible": lambda env: Call(params={"invoice_id": env.invoice()}),
    "RecordInvoicePayment": lambda env: Call(params={"invoice_id": env.invoice()}, json={"reference": "wire-1"}),
    "CreateCreditNote": lambda env: Call(params={"invoice_id": env.invoice()}, json={"amount": 1, "reason": "gift"}),
    "GetBillingAccount": lambda env: Call(params={"tenant_id": env.a}),
    "UpdateBillingAccount": lambda env: Call(params={"tenant_id": env.a}, json={"tax_rate_bp": 1900}),
    "ChangePlan": lambda env: Call(params={"tenant_id": env.a}, json={"plan": env.other_plan()}),
    "ListInvoices": lambda env: Call(params={"tenant_id": env.a}),
    "GetInvoice": lambda env: Call(params={"tenant_id": env.a, "invoice_id": env.invoice()}),
    "RenderInvoice": lambda env: Call(params={"tenant_id": env.a, "invoice_id": env.invoice()}),
    "GetUsage": lambda env: Call(params={"tenant_id": env.a}),
    "GetDraftInvoice": lambda env: Call(params={"tenant_id": env.a}),
    "ListSources": lambda env: Call(params={"tenant_id": env.a}),
    "GetSource": lambda env: Call(params={"tenant_id": env.a, "source_id": env.world.a.source_id}),
    "CreateSource": lambda env: Call(params={"tenant_id": env.a}, json={"name": "site", "kind": "web"}),
    "UpdateSource": lambda env: Call(params={"tenant_id": env.a, "source_id": env.source()}, json={"name": "renamed"}),
    "RotateWriteKey": lambda env: Call(params={"tenant_id": env.a, "source_id": env.source()}),
    "RevokeSource": lambda env: Call(params={"tenant_id": env.a, "source_id": env.source()}),
    "ListCells": lambda env: Call(),
    "RegisterCell": lambda env: Call(json={"name": env.cell_name(), "region": "eu-west-1", "endpoint": "http://cell"}),
    "GetCell": lambda env: Call(params={"cell_id": env.cell()}),
    "UpdateCell": lambda env: Call(params={"cell_id": env.cell()}, json={"capacity": 7}),
    "RotateCellCredential": lambda env: Call(params={"cell_id": env.cell()}),
    "ListProvisioningRuns": lambda env: Call(),
    "GetProvisioningRun": lambda env: Call(params={"run_id": env.failed_run("resume", "resume_tenant")}),
    "RetryProvisioningRun": lambda env: Call(params={"run_id": env.failed_run("resume", "resume_tenant")}),
    "RollBackProvisioningRun": lambda env: Call(params={"run_id": env.failed_run("provision", "activate")}),
    "ListTenantProvisioningRuns": lambda env: Call(params={"tenant_id": env.a}),
    "UpgradeTenantTemplate": lambda env: Call(params={"tenant_id": env.a}, json={"template": "base"}),
    "GetTenantPlacement": lambda env: Call(params={"tenant_id": env.placed()}),
    "GetTrustPolicy": lambda env: Call(params={"tenant_id": env.pattern_a()}),
    "ListSsoConnections": lambda env: Call(params={"tenant_id": env.a}),
    "GetSsoConnection": lambda env: Call(params={"tenant_id": env.a, "connection_id": env.sso_connection()}),
    "CreateSsoConnection": lambda env: Call(
        params={"tenant_id": env.a},
        json={
            "issuer": "https://idp.example.com",
            "client_id": "client",
            "client_secret": "secret",
            "allowed_domains": [f"{uuid.uuid4().hex[:12]}.example.com"],
        },
    ),
    "UpdateSsoConnection": lambda env: Call(
        params={"tenant_id": env.a, "connection_id": env.sso_connection()}, json={"name": "renamed"}
    ),
    "DeleteSsoConnection": lambda env: Call(params={"tenant_id": env.a, "connection_id": env.sso_connection()}),
    "TestSsoConnection": lambda env: Call(params={"tenant_id": env.a, "connection_id": env.sso_connection()}),
    "DiscoverSso": lambda env: Call(query={"email": "someone@example.com"}),
}


# --- helpers -----------------------------------------------------------------------------------


def operations(client: httpx.Client) -> dict[str, tuple[str, str]]:
    """Operation id → (method, path template), from the served OpenAPI document."""
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    found: dict[str, tuple[str, str]] = {}
    for path, item in response.json()["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "operationId" in operation:
                assert operation["operationId"] not in found, f"duplicate operationId {operation['operationId']}"
                found[operation["operationId"]] = (method.upper(), path)
    return found


def principals(world: World) -> dict[str, Actor | None]:
    named: dict[str, Actor | None] = dict(world.actors())
    named["anonymous"] = None
    return named


def send(client: httpx.Client, method: str, template: str, call: Call, actor: Actor | None) -> httpx.Response:
    path = template.format(**call.params)
    headers = actor.headers if actor is not None else {}
    return client.request(method, path, json=call.json, headers=headers, params=call.query or None)


def expected_denial(operation: str, template: str, name: str) -> tuple[int, str]:
    if (operation, name) in DENIAL_OVERRIDES:
        return DENIAL_OVERRIDES[(operation, name)]
    if name == "anonymous":
        return 401, "not_authenticated"
    if "{tenant_id}" in template and name == "outsider":
        return 404, "tenant_not_found"
    return 403, "permission_denied"


def _code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


# --- tests ---------------------------------------------------------------------------------------


def test_matrix_covers_every_route(client):
    routes = operations(client)
    assert set(MATRIX) == set(routes), (
        f"routes without a matrix row: {sorted(set(routes) - set(MATRIX))}; "
        f"rows without a route: {sorted(set(MATRIX) - set(routes))}"
    )
    assert set(PREPARE) == set(MATRIX)


def test_principals_are_the_seeded_world(world):
    assert set(principals(world)) == EVERYONE


def test_specification_keeps_its_promises():
    """The table itself: keys never write, finance reads tenants only, outsiders see no tenant."""
    writes = {op for op in MATRIX if not op.startswith(("List", "Get", "Export", "Render")) and MATRIX[op] != EVERYONE}
    # An analytics token is a short-lived pass to read; issuing it changes nothing of the tenant's.
    for op in writes - {"Logout", "ChangePassword", "CreateAnalyticsToken"}:
        assert not MATRIX[op] & A_KEYS, f"an API key may {op}"
        billing = {"finance"} if op in BILLING_FINANCE_OPS else set()
        assert MATRIX[op] <= ADMIN_ONLY | A_MANAGERS | billing, f"{op} is open to {sorted(MATRIX[op])}"
    finance = {op for op, allowed in MATRIX.items() if "finance" in allowed and allowed < EVERYONE}
    people = {"GetMe", "ListTenants", "Logout", "ChangePassword", "ListMySessions"}
    assert finance - people == {"GetTenant"} | BILLING_FINANCE_OPS
    billing_words = ("Invoice", "Invoices", "Plans", "Revenue", "Note", "Period", "Plan", "Account", "Lines", "Usage")
    billing_words += ("Uncollectible", "Payment")
    assert all(op.endswith(billing_words) for op in BILLING_FINANCE_OPS)


@pytest.mark.parametrize("operation", sorted(MATRIX))
def test_route_permissions(operation, client, world, aio):
    method, template = operations(client)[operation]
    env = Env(world, aio)
    everyone = principals(world)
    allowed = MATRIX[operation]
    # Denied principals first: an allowed call may change what the route's target looks like.
    order = sorted(set(everyone) - allowed) + sorted(allowed)
    failures = []
    for name in order:
        call = PREPARE[operation](env)
        response = send(client, method, template, call, everyone[name])
        if name in allowed:
            if not 200 <= response.status_code < 300:
                failures.append(f"{name}: expected 2xx, got {response.status_code} {response.text}")
            continue
        status, code = expected_denial(operation, template, name)
        if (response.status_code, _code(response)) != (status, code):
            failures.append(f"{name}: expected {status} {code}, got {response.status_code} {response.text}")
    assert not failures, f"{method} {template} ({operation}):\n" + "\n".join(failures)


def _member_call(client: httpx.Client, actor: Actor, method: str, tenant_id: str, user_id: str, **kw: Any):
    return client.request(method, f"/api/v1/tenants/{tenant_id}/members/{user_id}", headers=actor.headers, **kw)


def test_only_owners_and_ops_admin_grant_or_take_away_owner(client, world, aio):
    env = Env(world, aio)
    a = world.a.id
    admin, owner, ops_admin = world.a.members["admin"], world.a.members["owner"], world.platform["ops_admin"]

    def check(response: httpx.Response, status: int, code: str | None = None) -> None:
        assert response.status_code == status, response.text
        if code:
            assert _code(response) == code, response.text

    # An admin may manage members but not the owner role: granting, changing, removing or inviting it.
    check(_member_call(client, admin, "PATCH", a, env.member("viewer"), json={"role": "owner"}), 403, "owner_required")
    spare_owner = env.member("owner")
    check(_member_call(client, admin, "PATCH", a, spare_owner, json={"role": "admin"}), 403, "owner_required")
    check(_member_call(client, admin, "DELETE", a, spare_owner), 403, "owner_required")
    invite = client.post(
        f"/api/v1/tenants/{a}/invites", headers=admin.headers, json={"email": env.email(), "role": "owner"}
    )
    check(invite, 403, "owner_required")
    # The refused changes left the spare owner an owner.
    assert _member_call(client, owner, "GET", a, spare_owner).json()["role"] == "owner"
    # An admin changing a non-owner's role is fine.
    check(_member_call(client, admin, "PATCH", a, env.member("viewer"), json={"role": "sales"}), 200)

    for actor in (owner, ops_admin):
        promoted = env.member("viewer")
        response = _member_call(client, actor, "PATCH", a, promoted, json={"role": "owner"})
        check(response, 200)
        assert response.json()["role"] == "owner"
        demoted = _member_call(client, actor, "PATCH", a, promoted, json={"role": "admin"})
        check(demoted, 200)
        assert demoted.json()["role"] == "admin"
        check(_member_call(client, actor, "DELETE", a, env.member("owner")), 204)
        invite = client.post(
            f"/api/v1/tenants/{a}/invites", headers=actor.headers, json={"email": env.email(), "role": "owner"}
        )
        check(invite, 201)


def test_api_keys_have_no_session_or_password(client, world):
    for name in sorted(A_KEYS):
        key = world.actors()[name]
        logout = client.post("/api/v1/auth/logout", headers=key.headers)
        assert (logout.status_code, _code(logout)) == (403, "not_a_session"), logout.text
        change = client.post(
            "/api/v1/auth/password",
            headers=key.headers,
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        )
        assert (change.status_code, _code(change)) == (403, "not_a_session"), change.text
        # Refused, not spent: the key still works.
        assert client.get(f"/api/v1/tenants/{world.a.id}", headers=key.headers).status_code == 200
