"""Two-tenant leak test: nothing tenant A's people or keys do reaches, reveals or changes tenant B."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from control_plane.db.models import ApiKey, Invite, Membership, Source, Tenant, User
from control_plane.sso.models import SsoConnection
from kernel.db import new_id
from kernel.pagination import decode_cursor
from kernel.tenancy import tenant_scope
from tests.support.world import Actor, World

TENANT_PARAM = "{tenant_id}"

# Every tenant-scoped operation, with a valid body where it takes one (so a request that got past
# the tenant check would really act). The test fails when the app has a tenant route not listed here.
LEAK_CASES: dict[str, Any] = {
    "GetTenant": None,
    "UpdateTenant": {"name": "Taken over"},
    "ProvisionTenant": None,
    "SuspendTenant": {"reason": "taken over"},
    "ReactivateTenant": None,
    "DeleteTenant": None,
    "ListMembers": None,
    "GetMember": None,
    "UpdateMember": {"role": "owner"},
    "RemoveMember": None,
    "ListInvites": None,
    "CreateInvite": {"email": "accomplice@example.com", "role": "owner"},
    "RevokeInvite": None,
    "ListApiKeys": None,
    "GetApiKey": None,
    "CreateApiKey": {"name": "backdoor", "scopes": ["tenant:read", "members:read"]},
    "RotateApiKey": {"grace_period_seconds": 0},
    "RevokeApiKey": None,
    "ListTenantAuditEntries": None,
    "ListSources": None,
    "GetSource": None,
    "CreateSource": {"name": "siphon", "kind": "server"},
    "UpdateSource": {"name": "Taken over", "allowed_origins": ["https://evil.example.com"]},
    "RotateWriteKey": {"grace_period_seconds": 0},
    "RevokeSource": None,
    "ListSsoConnections": None,
    "GetSsoConnection": None,
    "CreateSsoConnection": {
        "issuer": "https://idp.example.com",
        "client_id": "mole",
        "client_secret": "secret",
        "allowed_domains": ["hijacked.example.com"],
        "role_claim": "groups",
        "role_mapping": {"moles": "owner"},
    },
    "UpdateSsoConnection": {"allowed_domains": ["hijacked.example.com"], "enforce_sso": True},
    "DeleteSsoConnection": None,
    "TestSsoConnection": None,
    "ListTenantProvisioningRuns": None,
    "UpgradeTenantTemplate": {"template": "saas"},
    "GetTenantPlacement": None,
    "GetTrustPolicy": None,
    "CreateAnalyticsToken": None,
    "GetBillingAccount": None,
    "UpdateBillingAccount": {"tax_rate_bp": 0, "billing_email": "thief@example.com"},
    "ChangePlan": {"plan": "enterprise"},
    "ListInvoices": None,
    "GetInvoice": None,
    "RenderInvoice": None,
    "GetUsage": None,
    "GetDraftInvoice": None,
}

# Object ids in tenant routes' paths, and the id prefix of a made-up one.
OBJECT_PARAMS = {
    "user_id": "usr",
    "key_id": "key",
    "invite_id": "inv",
    "source_id": "src",
    "connection_id": "sso",
    "invoice_id": "inv",
}

# Tenant A's principals hold every tenant permission between them; owner and admin hold all.
A_MANAGERS = ("a:owner", "a:admin")


def operations(client: httpx.Client) -> dict[str, tuple[str, str]]:
    """Operation id → (method, path template), from the served OpenAPI document."""
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    return {
        operation["operationId"]: (method.upper(), path)
        for path, item in response.json()["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }


def tenant_operations(client: httpx.Client) -> dict[str, tuple[str, str]]:
    return {op: route for op, route in operations(client).items() if TENANT_PARAM in route[1]}


def a_principals(world: World) -> dict[str, Actor]:
    """Every member role of tenant A and both of its API keys."""
    named = {name: actor for name, actor in world.actors().items() if name.startswith("a:")}
    assert len(named) == len(world.a.members) + len(world.a.keys) == 8, sorted(named)
    return named


def _run(world: World, aio: Callable[[Awaitable[Any]], Any], work: Callable[[Any], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with world.runtime.services() as services:
            return await work(services)

    return aio(run())


def b_invoice(world: World, aio: Callable[[Awaitable[Any]], Any]) -> str:
    """Tenant B's draft invoice of the current period."""

    async def work(services: Any) -> str:
        now = dt.datetime.now(dt.UTC)
        invoice = await services.billing.ensure_draft(world.b.id, now, now)
        await services.db.commit()
        return str(invoice.id)

    return _run(world, aio, work)


def b_sso_connection(world: World, aio: Callable[[Awaitable[Any]], Any]) -> str:
    async def work(services: Any) -> str:
        with tenant_scope(world.b.id):
            connection = SsoConnection(
                id=new_id("sso"),
                tenant_id=world.b.id,
                name="B's provider",
                issuer="https://idp.tenant-b.example.com",
                client_id="b-client",
                client_secret_encrypted=services.runtime.secret_box.encrypt("b-secret"),
                scopes=["openid", "email"],
                allowed_domains=[],
                role_mapping={},
                default_role="viewer",
            )
            services.db.add(connection)
            await services.db.commit()
        return connection.id

    return str(_run(world, aio, work))


def b_invite(world: World, aio: Callable[[Awaitable[Any]], Any]) -> str:
    async def work(services: Any) -> str:
        invite = await services.identity.invite(world.b.id, f"b-{uuid.uuid4().hex[:8]}@example.com", "viewer", None)
        return str(invite.id)

    return str(_run(world, aio, work))


def snapshot(world: World, aio: Callable[[Awaitable[Any]], Any]) -> dict[str, Any]:
    """Everything of tenant B a leak could change, read straight from the database."""
    b = world.b.id

    async def work(services: Any) -> dict[str, Any]:
        db = services.db
        tenant = await db.get(Tenant, b)
        with tenant_scope(b):
            members = (await db.execute(select(Membership.user_id, Membership.role))).all()
            keys = (await db.scalars(select(ApiKey))).all()
            invites = (await db.scalars(select(Invite))).all()
            sources = (await db.scalars(select(Source))).all()
            sso = (await db.scalars(select(SsoConnection))).all()
        users = (await db.scalars(select(User).where(User.id.in_([m.user_id for m in members])))).all()
        return {
            "tenant": (tenant.status, tenant.name, tenant.plan, tenant.template, tenant.status_reason),
            "members": sorted((m.user_id, m.role) for m in members),
            "users": sorted((u.id, u.name, u.is_active, u.platform_role, u.password_hash) for u in users),
            "keys": sorted(
                (k.id, k.name, k.prefix, k.secret_hash, tuple(k.scopes), k.revoked_at, k.rotated_at, k.expires_at)
                for k in keys
            ),
            "invites": sorted((i.id, i.email, i.role, i.revoked_at, i.accepted_at) for i in invites),
            "sso": sorted(
                (c.id, c.name, c.issuer, c.client_id, c.client_secret_encrypted, c.enabled, c.enforce_sso) for c in sso
            ),
            "sources": sorted(
                (x.id, x.name, x.write_key_hash, tuple(x.allowed_origins), x.revoked_at, x.rotated_at) for x in sources
            ),
        }

    result: dict[str, Any] = _run(world, aio, work)
    return result


def b_secrets(world: World, state: dict[str, Any]) -> list[str]:
    """Things about tenant B a tenant-A caller does not know and must never be told."""
    return [
        "Tenant B",
        world.b.slug,
        *(actor.email or "" for actor in world.b.members.values()),
        *(key[2] for key in state["keys"]),  # visible key prefixes
        *(invite[1] for invite in state["invites"]),  # invited emails
    ]


def normalized(response: httpx.Response, ids: list[str]) -> tuple[int, Any]:
    """Status and body with the ids the caller sent, and the per-request id, blanked out."""
    try:
        body = response.json()
    except ValueError:
        return response.status_code, response.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "request_id"}
        for key, value in body.items():
            if isinstance(value, str):
                for id_ in ids:
                    value = value.replace(id_, "<id>")
                body[key] = value
    return response.status_code, body


def _code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _list_all(client: httpx.Client, path: str, actor: Actor, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, headers=actor.headers, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items
    raise AssertionError(f"{path} did not stop paging")


# --- tests ---------------------------------------------------------------------------------------


def test_every_tenant_route_has_a_leak_case(client):
    routes = tenant_operations(client)
    assert set(routes) == set(LEAK_CASES), (
        f"tenant routes without a leak case: {sorted(set(routes) - set(LEAK_CASES))}; "
        f"leak cases without a route: {sorted(set(LEAK_CASES) - set(routes))}"
    )
    for operation, (_, path) in routes.items():
        extra = {p.strip("{}") for p in path.split("/") if p.startswith("{")} - {"tenant_id"}
        assert extra <= set(OBJECT_PARAMS), f"{operation}: no tenant-B object for {sorted(extra - set(OBJECT_PARAMS))}"


@pytest.mark.parametrize("operation", sorted(LEAK_CASES))
def test_tenant_b_is_invisible_to_tenant_a(operation, client, world, aio):
    method, template = tenant_operations(client)[operation]
    a, b = world.a.id, world.b.id
    b_objects = {
        "user_id": world.b.members["viewer"].user_id or "",
        "key_id": world.b.key_ids["key_all"],
        "invite_id": b_invite(world, aio),
        "source_id": world.b.source_id,
        "connection_id": b_sso_connection(world, aio),
        "invoice_id": b_invoice(world, aio),
    }
    missing = {name: new_id(prefix) for name, prefix in OBJECT_PARAMS.items()}
    missing_tenant = new_id("ten")
    ids = [b, missing_tenant, *b_objects.values(), *missing.values()]
    names_objects = any(f"{{{name}}}" in template for name in OBJECT_PARAMS)
    before = snapshot(world, aio)
    secrets = b_secrets(world, before)
    body = LEAK_CASES[operation]

    def call(actor: Actor, tenant_id: str, objects: dict[str, str]) -> httpx.Response:
        path = template.format(tenant_id=tenant_id, **objects)
        return client.request(method, path, json=body, headers=actor.headers)

    failures: list[str] = []
    for name, actor in a_principals(world).items():
        # Tenant B's own path (with B's object ids where the route names one): as if B did not exist.
        foreign = call(actor, b, b_objects)
        absent = call(actor, missing_tenant, missing)
        if (foreign.status_code, _code(foreign)) != (404, "tenant_not_found"):
            failures.append(f"{name} on B's path: expected 404 tenant_not_found, got {foreign.text}")
        if normalized(foreign, ids) != normalized(absent, ids):
            failures.append(f"{name} on B's path answers unlike a missing tenant: {foreign.text} vs {absent.text}")
        # B's object ids under A's own path: the same answer as for ids that exist nowhere.
        if names_objects:
            foreign_object = call(actor, a, b_objects)
            absent_object = call(actor, a, missing)
            if normalized(foreign_object, ids) != normalized(absent_object, ids):
                failures.append(
                    f"{name} with B's ids under A's path answers unlike missing ids: "
                    f"{foreign_object.text} vs {absent_object.text}"
                )
            expected = {404} if name in A_MANAGERS else {403, 404}
            if foreign_object.status_code not in expected:
                failures.append(
                    f"{name} with B's ids under A's path: expected {sorted(expected)}, "
                    f"got {foreign_object.status_code} {foreign_object.text}"
                )
            responses = (foreign, foreign_object)
        else:
            responses = (foreign,)
        for response in responses:
            leaked = [secret for secret in secrets if secret and secret in response.text]
            if leaked:
                failures.append(f"{name}: a refusal reveals {leaked}: {response.text}")
    assert not failures, f"{method} {template} ({operation}):\n" + "\n".join(failures)

    # Tenant B is exactly as it was, and still works.
    assert snapshot(world, aio) == before
    b_key, b_owner = world.b.keys["key_all"], world.b.members["owner"]
    assert client.get(f"/api/v1/tenants/{b}", headers=b_key.headers).status_code == 200
    members = client.get(f"/api/v1/tenants/{b}/members", headers=b_owner.headers)
    assert members.status_code == 200, members.text
    assert {m["user_id"] for m in members.json()["items"]} == {actor.user_id for actor in world.b.members.values()}


def test_list_tenants_shows_tenant_a_only(client, world):
    a = world.a.id
    # A third tenant, so that a tenant-A caller paging past its own tenant would meet two foreign ones.
    created = client.post(
        "/api/v1/tenants", headers=world.platform["ops_admin"].headers, json={"name": "Tenant C", "slug": "tenant-c"}
    )
    assert created.status_code == 201, created.text
    label = {world.a.id: "A", world.b.id: "B", created.json()["id"]: "C"}
    failures: list[str] = []
    for name, actor in a_principals(world).items():
        listed = _list_all(client, "/api/v1/tenants", actor)
        if [t["id"] for t in listed] != [a]:
            failures.append(f"{name} lists {[t['slug'] for t in listed]}")
        for query in ({"q": "tenant-b"}, {"q": "tenant"}, {"status": "active"}, {"plan": "growth"}):
            found = [t["id"] for t in _list_all(client, "/api/v1/tenants", actor, **query)]
            if set(found) - {a}:
                failures.append(f"{name} lists foreign tenants with {query}: {found}")
        # Page by page the listing must look as if tenant A were the only tenant: one page, and no
        # cursor that names (or counts) anyone else's tenant.
        pages, cursor, cursors = 0, None, []
        while pages < 10:
            response = client.get(
                "/api/v1/tenants", headers=actor.headers, params={"limit": 1, **({"cursor": cursor} if cursor else {})}
            )
            assert response.status_code == 200, response.text
            pages += 1
            cursor = response.json()["next_cursor"]
            if not cursor:
                break
            cursors.append(decode_cursor(cursor)[1])
        foreign = [f"{label.get(id_, '?')} ({id_})" for id_ in cursors if id_ != a]
        if foreign:
            failures.append(f"{name}: ListTenants?limit=1 hands out cursors naming foreign tenants {foreign}")
        if pages != 1:
            failures.append(f"{name}: ListTenants?limit=1 offers {pages} pages though one tenant is visible")
    assert not failures, "\n".join(failures)


def test_me_shows_tenant_a_only(client, world):
    for name, actor in a_principals(world).items():
        me = client.get("/api/v1/auth/me", headers=actor.headers)
        assert me.status_code == 200, me.text
        body = me.json()
        if body["principal_type"] == "api_key":
            assert body["tenant_id"] == world.a.id, (name, body)
        else:
            assert [m["tenant_id"] for m in body["memberships"]] == [world.a.id], (name, body)


def test_tenant_a_audit_never_shows_tenant_b(client, world, aio):
    a, b = world.a.id, world.b.id
    ops_admin, b_owner = world.platform["ops_admin"], world.b.members["owner"]
    # Activity in B: its own people, Livora staff, and tenant A's people knocking on B's door.
    b_invites, a_invites = f"/api/v1/tenants/{b}/invites", f"/api/v1/tenants/{a}/invites"
    response = client.post(b_invites, headers=b_owner.headers, json={"email": "new-b@example.com"})
    assert response.status_code == 201, response.text
    response = client.patch(f"/api/v1/tenants/{b}", headers=ops_admin.headers, json={"name": "Tenant B2"})
    assert response.status_code == 200, response.text
    for actor in a_principals(world).values():
        response = client.post(b_invites, headers=actor.headers, json={"email": "mole@example.com"})
        assert response.status_code == 404, response.text
    # And some in A, so A's trail is not trivially empty.
    response = client.post(a_invites, headers=world.a.members["admin"].headers, json={"email": "new-a@example.com"})
    assert response.status_code == 201, response.text

    b_entries = {e["id"] for e in _list_all(client, "/api/v1/audit", ops_admin, tenant_id=b)}
    assert b_entries, "tenant B should have audit entries"
    b_ids = {b, *world.b.key_ids.values(), *(m.user_id for m in world.b.members.values())}
    for name in ("a:owner", "a:admin", "a:key_all"):
        actor = world.actors()[name]
        path = f"/api/v1/tenants/{a}/audit"
        for query in ({}, {"tenant_id": b}, {"actor_id": b_owner.user_id}, {"target_id": world.b.key_ids["key_all"]}):
            entries = _list_all(client, path, actor, **query)
            assert {e["tenant_id"] for e in entries} <= {a}, (name, query, entries)
            assert not {e["id"] for e in entries} & b_entries, (name, query)
            assert not {e["target_id"] for e in entries} & b_ids, (name, query)
            if not query:
                assert entries, f"{name} should see tenant A's own entries"
