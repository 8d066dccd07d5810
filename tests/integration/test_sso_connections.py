"""Managing a tenant's SSO connections: validation, unique domains, owner-only grants, isolation, the
connection test, and sessions ending with their connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from control_plane.sso.models import SsoConnection
from kernel.tenancy import dangerously_unscoped
from tests.support.api import problem, set_columns
from tests.support.oidc import FakeProvider, fixtures
from tests.support.world import Actor, World

settings, server, browser = fixtures.settings, fixtures.server, fixtures.browser

CLIENT_ID = "livora-client"
CLIENT_SECRET = "the first secret"


@pytest.fixture
def idp() -> Iterator[FakeProvider]:
    provider = FakeProvider(CLIENT_ID, CLIENT_SECRET).start()
    provider.account = {"sub": "s-1", "email": "kim@acme.test", "email_verified": True}
    yield provider
    provider.stop()


def url(tenant_id: str, *rest: str) -> str:
    return "/".join([f"/api/v1/tenants/{tenant_id}/sso/connections", *rest]).rstrip("/")


def create(client: httpx.Client, actor: Actor, tenant_id: str, issuer: str, **fields: Any) -> httpx.Response:
    body = {
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "allowed_domains": ["acme.test"],
        **fields,
    }
    return client.post(url(tenant_id), json=body, headers=actor.headers)


def stored(world: World, aio: Any, connection_id: str) -> SsoConnection:
    async def load() -> SsoConnection:
        async with world.runtime.services() as services:
            with dangerously_unscoped():
                return await services.db.scalar(select(SsoConnection).where(SsoConnection.id == connection_id))

    return aio(load())


def test_create_read_update_delete(client, world, idp, aio):
    admin = world.a.members["admin"]
    created = create(client, admin, world.a.id, idp.issuer, name="Acme Okta", role_claim="groups")
    assert created.status_code == 201, created.text
    connection = created.json()
    assert connection["allowed_domains"] == ["acme.test"] and connection["scopes"] == ["openid", "email", "profile"]
    assert connection["sign_in_url"].endswith(f"/api/v1/sso/start?connection_id={connection['id']}")
    assert "client_secret" not in created.text.replace("client_secret_set", "")
    first_cipher = stored(world, aio, connection["id"]).client_secret_encrypted

    listed = client.get(url(world.a.id), headers=admin.headers).json()
    assert [c["id"] for c in listed["items"]] == [connection["id"]] and listed["next_cursor"] is None
    assert client.get(url(world.a.id, connection["id"]), headers=admin.headers).json() == connection

    updated = client.patch(
        url(world.a.id, connection["id"]),
        json={"client_secret": "the second secret", "allowed_domains": ["acme.test", "acme-eu.test"], "role_claim": ""},
        headers=admin.headers,
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["allowed_domains"] == ["acme-eu.test", "acme.test"] and updated.json()["role_claim"] is None
    row = stored(world, aio, connection["id"])
    assert row.client_secret_encrypted != first_cipher
    assert world.runtime.secret_box.decrypt(row.client_secret_encrypted) == "the second secret"

    assert client.delete(url(world.a.id, connection["id"]), headers=admin.headers).status_code == 204
    problem(client.get(url(world.a.id, connection["id"]), headers=admin.headers), 404, "sso_connection_not_found")

    audit = client.get(f"/api/v1/tenants/{world.a.id}/audit", headers=admin.headers).json()["items"]
    actions = {entry["action"] for entry in audit}
    assert {"sso_connection.created", "sso_connection.updated", "sso_connection.deleted"} <= actions
    assert all("the second secret" not in str(entry) and CLIENT_SECRET not in str(entry) for entry in audit)


def test_bad_configurations_are_refused(client, world, idp):
    owner = world.a.members["owner"]
    problem(create(client, owner, world.a.id, idp.issuer, scopes=["email"]), 400, "sso_openid_scope_required")
    problem(create(client, owner, world.a.id, "ftp://idp.example.com"), 400, "validation_failed")
    problem(create(client, owner, world.a.id, idp.issuer, allowed_domains=[]), 400, "validation_failed")
    problem(create(client, owner, world.a.id, idp.issuer, allowed_domains=["Not A Domain"]), 400, "validation_failed")
    problem(create(client, owner, world.a.id, idp.issuer, default_role="emperor"), 400, "validation_failed")
    problem(create(client, owner, world.a.id, idp.issuer, unknown_field=1), 400, "validation_failed")


def test_a_domain_belongs_to_one_connection_in_the_installation(client, world, idp):
    a_owner, b_owner = world.a.members["owner"], world.b.members["owner"]
    first = create(client, a_owner, world.a.id, idp.issuer).json()
    problem(create(client, b_owner, world.b.id, idp.issuer), 409, "sso_domain_taken")
    problem(
        create(client, a_owner, world.a.id, idp.issuer, allowed_domains=["other.test", "acme.test"]),
        409,
        "sso_domain_taken",
    )
    second = create(client, b_owner, world.b.id, idp.issuer, allowed_domains=["b.test"])
    assert second.status_code == 201, second.text
    moved = client.patch(
        url(world.b.id, second.json()["id"]), json={"allowed_domains": ["acme.test"]}, headers=b_owner.headers
    )
    problem(moved, 409, "sso_domain_taken")
    # Once tenant A lets the domain go, tenant B may take it.
    assert client.delete(url(world.a.id, first["id"]), headers=a_owner.headers).status_code == 204
    assert create(client, b_owner, world.b.id, idp.issuer).status_code == 201


def test_only_owners_let_sso_grant_the_owner_role(client, world, idp):
    admin, owner = world.a.members["admin"], world.a.members["owner"]
    problem(create(client, admin, world.a.id, idp.issuer, role_mapping={"root": "owner"}), 403, "owner_required")
    problem(create(client, admin, world.a.id, idp.issuer, default_role="owner"), 403, "owner_required")
    connection = create(client, owner, world.a.id, idp.issuer, role_claim="groups", role_mapping={"root": "owner"})
    assert connection.status_code == 201, connection.text
    target = url(world.a.id, connection.json()["id"])
    # An admin may still edit other parts of it, but not widen or keep rewriting the owner grant.
    assert client.patch(target, json={"name": "Renamed"}, headers=admin.headers).status_code == 200
    problem(
        client.patch(target, json={"role_mapping": {"root": "owner", "x": "owner"}}, headers=admin.headers),
        403,
        "owner_required",
    )


def test_connections_are_invisible_across_tenants_and_to_lesser_roles(client, world, idp):
    connection = create(client, world.a.members["owner"], world.a.id, idp.issuer).json()
    b_admin = world.b.members["admin"]
    problem(client.get(url(world.a.id, connection["id"]), headers=b_admin.headers), 404, "tenant_not_found")
    problem(client.get(url(world.b.id, connection["id"]), headers=b_admin.headers), 404, "sso_connection_not_found")
    problem(client.delete(url(world.b.id, connection["id"]), headers=b_admin.headers), 404, "sso_connection_not_found")
    assert client.get(url(world.b.id), headers=b_admin.headers).json()["items"] == []
    for role in ("viewer", "analyst", "marketer", "sales"):
        actor = world.a.members[role]
        problem(client.get(url(world.a.id), headers=actor.headers), 403, "permission_denied")
    problem(client.get(url(world.a.id), headers=world.a.keys["key_all"].headers), 403, "permission_denied")


def test_the_connection_test_reports_what_it_found(client, world, idp, aio):
    admin = world.a.members["admin"]
    good = create(client, admin, world.a.id, idp.issuer).json()
    report = client.post(url(world.a.id, good["id"], "test"), headers=admin.headers)
    assert report.status_code == 200, report.text
    assert report.json()["ok"] is True and report.json()["key_ids"] == ["key-1"]
    assert report.json()["signing_algorithms"] == ["RS256"]
    assert stored(world, aio, good["id"]).last_test_ok is True

    idp.stop()  # the provider goes away
    failed = client.post(url(world.a.id, good["id"], "test"), headers=admin.headers).json()
    assert failed["ok"] is False and failed["error_code"] == "sso_provider_unavailable" and failed["detail"]
    assert stored(world, aio, good["id"]).last_test_ok is False
    got = client.get(url(world.a.id, good["id"]), headers=admin.headers).json()
    assert got["last_test_ok"] is False and got["last_tested_at"]


def _sign_in(browser: httpx.Client) -> None:
    started = browser.get("/api/v1/sso/start", params={"email": "kim@acme.test"})
    assert started.status_code == 302, started.text
    back = browser.get(started.headers["location"])
    finished = browser.get(back.headers["location"])
    assert finished.status_code == 302, finished.text
    assert browser.get("/api/v1/auth/me").status_code == 200


def test_disabling_or_deleting_a_connection_ends_its_sessions(client, browser, world, idp):
    admin = world.a.members["admin"]
    connection = create(client, admin, world.a.id, idp.issuer).json()
    target = url(world.a.id, connection["id"])
    _sign_in(browser)

    assert client.patch(target, json={"enabled": False}, headers=admin.headers).status_code == 200
    problem(browser.get("/api/v1/auth/me"), 401, "invalid_session")
    # A disabled connection routes nobody and starts no sign-in.
    assert client.get("/api/v1/sso/discover", params={"email": "kim@acme.test"}).json() == {"method": "password"}
    problem(browser.get("/api/v1/sso/start", params={"email": "kim@acme.test"}), 404, "sso_connection_not_found")

    assert client.patch(target, json={"enabled": True}, headers=admin.headers).status_code == 200
    _sign_in(browser)
    assert client.delete(target, headers=admin.headers).status_code == 204
    problem(browser.get("/api/v1/auth/me"), 401, "invalid_session")


def test_suspended_tenants_route_nobody(client, browser, world, idp, aio):
    from control_plane.db.models import Tenant

    create(client, world.a.members["owner"], world.a.id, idp.issuer)
    assert client.get("/api/v1/sso/discover", params={"email": "kim@acme.test"}).json()["method"] == "sso"
    set_columns(world, aio, Tenant, world.a.id, status="suspended")
    assert client.get("/api/v1/sso/discover", params={"email": "kim@acme.test"}).json() == {"method": "password"}
    problem(browser.get("/api/v1/sso/start", params={"email": "kim@acme.test"}), 404, "sso_connection_not_found")
