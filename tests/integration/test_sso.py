"""SSO end to end against a real OpenID provider (`oidc-provider` on Node), driven like a browser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from control_plane.db.models import Membership, User
from control_plane.sso.models import SsoConnection, SsoIdentity
from kernel.tenancy import dangerously_unscoped
from tests.support.api import problem
from tests.support.oidc import NodeProvider, fixtures, sign_in_at_provider
from tests.support.oidc.fixtures import CALLBACK
from tests.support.server import LiveServer
from tests.support.world import PASSWORD, World

CLIENT_ID = "livora-test"
CLIENT_SECRET = "a client secret nobody guesses"
DOMAIN = "client.test"

# The SSO fixtures replace the suite's `settings` and `server` in this module.
settings, server, browser = fixtures.settings, fixtures.server, fixtures.browser

# Accounts at the provider, by the login name typed there (which is also their `sub`).
ACCOUNTS = {
    "ana-sub": {"email": f"ana@{DOMAIN}", "name": "Ana", "groups": ["staff", "livora-admins"]},
    "bo-sub": {"email": f"bo@{DOMAIN}", "name": "Bo", "groups": ["staff"]},
    "eve-sub": {"email": "eve@elsewhere.test", "name": "Eve"},
    "pat-sub": {"email": f"pat@{DOMAIN}", "name": "Pat"},
    "cy-sub": {"email": f"cy@{DOMAIN}", "name": "Cy"},
}


@pytest.fixture
def provider(server: LiveServer) -> Iterator[NodeProvider]:
    node = NodeProvider(
        clients=[{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [server.url + CALLBACK]}],
        accounts=ACCOUNTS,
    ).start()
    yield node
    node.stop()


def create_connection(client: httpx.Client, world: World, issuer: str, **fields: Any) -> dict[str, Any]:
    body = {
        "name": "Client IdP",
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "allowed_domains": [DOMAIN],
        "role_claim": "groups",
        "role_mapping": {"livora-admins": "admin", "staff": "analyst"},
        "default_role": "viewer",
        **fields,
    }
    response = client.post(
        f"/api/v1/tenants/{world.a.id}/sso/connections", json=body, headers=world.a.members["owner"].headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def sso_sign_in(browser: httpx.Client, login: str, email: str) -> httpx.Response:
    """Start at Livora with the email, sign in at the provider, come back: the callback's answer."""
    started = browser.get("/api/v1/sso/start", params={"email": email})
    assert started.status_code == 302, started.text
    back = sign_in_at_provider(browser, started.headers["location"], login)
    assert back.headers["location"].startswith(str(browser.base_url) + CALLBACK), back.headers["location"]
    return browser.get(back.headers["location"])


def test_sign_in_end_to_end(client, browser, provider, world, aio):
    connection = create_connection(client, world, provider.issuer)
    assert connection["redirect_uri"] == str(browser.base_url) + CALLBACK
    assert "client_secret" not in connection and connection["client_secret_set"] is True

    # "Test connection" fetched the real provider's discovery document and keys.
    tested = client.post(
        f"/api/v1/tenants/{world.a.id}/sso/connections/{connection['id']}/test",
        headers=world.a.members["admin"].headers,
    )
    assert tested.status_code == 200, tested.text
    report = tested.json()
    assert report["ok"] is True, report
    assert report["token_endpoint"].startswith(provider.issuer) and report["key_ids"]

    # The sign-in page routes the email to the provider.
    page = browser.get("/login")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="email"' in page.text and "nonce-" in page.headers["content-security-policy"]
    discovered = browser.get("/api/v1/sso/discover", params={"email": f"Ana@{DOMAIN.upper()}"}).json()
    assert discovered["method"] == "sso"
    assert browser.get("/api/v1/sso/discover", params={"email": "x@nowhere.test"}).json() == {"method": "password"}

    started = browser.get(discovered["start_url"])
    assert started.status_code == 302
    authorize = urlsplit(started.headers["location"])
    query = parse_qs(authorize.query)
    assert f"{authorize.scheme}://{authorize.netloc}" == provider.issuer
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["state"][0] and query["nonce"][0] and query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == [str(browser.base_url) + CALLBACK]
    binding = browser.cookies.get("livora_sso")
    assert binding, "the sign-in is bound to this browser by an HttpOnly cookie"
    assert "httponly" in started.headers["set-cookie"].lower()

    back = sign_in_at_provider(browser, started.headers["location"], "ana-sub")
    finished = browser.get(back.headers["location"])
    assert finished.status_code == 302, finished.text
    assert finished.headers["location"] == "/login"
    session_cookie = browser.cookies.get("livora_session")
    assert session_cookie and session_cookie.startswith("lvs_")

    # An ordinary session: `me` knows the person, the tenant and the mapped (highest) role.
    me = browser.get("/api/v1/auth/me").json()
    assert me["user"]["email"] == f"ana@{DOMAIN}" and me["user"]["name"] == "Ana"
    assert [(m["tenant_id"], m["role"]) for m in me["memberships"]] == [(world.a.id, "admin")]
    # ... and it works as a bearer token, and opens the tenant's admin routes.
    bearer = {"Authorization": f"Bearer {session_cookie}"}
    assert client.get(f"/api/v1/tenants/{world.a.id}/sso/connections", headers=bearer).status_code == 200
    assert "ana@client.test" in browser.get("/login").text

    # The second sign-in finds the same user by (issuer, sub): no second account or membership.
    fresh = httpx.Client(base_url=str(browser.base_url), follow_redirects=False, timeout=30)
    with fresh:
        assert sso_sign_in(fresh, "ana-sub", f"ana@{DOMAIN}").status_code == 302

    async def rows() -> tuple[list[Any], list[Any], list[Any]]:
        async with world.runtime.services() as services, services.db as db:
            with dangerously_unscoped():
                users = (await db.scalars(select(User).where(User.email == f"ana@{DOMAIN}"))).all()
                members = (await db.scalars(select(Membership).where(Membership.user_id == users[0].id))).all()
                identities = (await db.scalars(select(SsoIdentity))).all()
                return list(users), list(members), list(identities)

    users, members, identities = aio(rows())
    assert len(users) == 1 and users[0].password_hash is None
    assert [(m.tenant_id, m.role) for m in members] == [(world.a.id, "admin")]
    assert [(i.issuer, i.subject, i.user_id) for i in identities] == [(provider.issuer, "ana-sub", users[0].id)]

    # Audited: the connection's creation and test, the sign-ins.
    audit = client.get(
        f"/api/v1/tenants/{world.a.id}/audit", headers=world.a.members["owner"].headers, params={"limit": 50}
    ).json()["items"]
    actions = [entry["action"] for entry in audit]
    assert "sso_connection.created" in actions and "sso_connection.tested" in actions
    assert actions.count("session.created") == 2 and "member.added" in actions

    # Logout ends the SSO session like any other.
    assert browser.post("/api/v1/auth/logout").status_code == 204
    problem(client.get("/api/v1/auth/me", headers=bearer), 401, "invalid_session")


def test_removed_or_disabled_users_are_refused_and_lose_their_sessions(client, browser, provider, world):
    create_connection(client, world, provider.issuer)
    assert sso_sign_in(browser, "bo-sub", f"bo@{DOMAIN}").status_code == 302
    token = browser.cookies.get("livora_session")
    bearer = {"Authorization": f"Bearer {token}"}
    me = client.get("/api/v1/auth/me", headers=bearer).json()
    assert me["memberships"][0]["role"] == "analyst"
    user_id = me["user"]["id"]

    # Removed from the tenant: the SSO session ends at once, and signing in again does not re-add them.
    removed = client.delete(f"/api/v1/tenants/{world.a.id}/members/{user_id}", headers=world.a.members["owner"].headers)
    assert removed.status_code == 204, removed.text
    problem(client.get("/api/v1/auth/me", headers=bearer), 401, "invalid_session")
    problem(sso_sign_in(browser, "bo-sub", f"bo@{DOMAIN}"), 403, "sso_user_removed")

    # A disabled account is refused too (Cy signs in once, in another browser, then ops disables the account).
    with httpx.Client(base_url=str(browser.base_url), follow_redirects=False, timeout=30) as cy_browser:
        assert sso_sign_in(cy_browser, "cy-sub", f"cy@{DOMAIN}").status_code == 302
        cy = cy_browser.get("/api/v1/auth/me").json()["user"]["id"]
        disabled = client.patch(
            f"/api/v1/users/{cy}", json={"is_active": False}, headers=world.platform["ops_admin"].headers
        )
        assert disabled.status_code == 200, disabled.text
        problem(cy_browser.get("/api/v1/auth/me"), 401, "invalid_session")
        problem(sso_sign_in(cy_browser, "cy-sub", f"cy@{DOMAIN}"), 403, "sso_user_disabled")


def test_wrong_state_and_replayed_code_are_refused(client, browser, provider, world):
    create_connection(client, world, provider.issuer)
    started = browser.get("/api/v1/sso/start", params={"email": f"pat@{DOMAIN}"})
    back = sign_in_at_provider(browser, started.headers["location"], "pat-sub")
    callback = urlsplit(back.headers["location"])
    params = parse_qs(callback.query)
    code, state = params["code"][0], params["state"][0]

    # A state this browser never started, none at all, or the right one from another browser: refused.
    problem(browser.get(CALLBACK, params={"code": code, "state": "made-up-state"}), 401, "sso_invalid_state")
    problem(browser.get(CALLBACK, params={"code": code}), 401, "sso_invalid_state")
    with httpx.Client(base_url=str(browser.base_url), follow_redirects=False) as other_browser:
        problem(other_browser.get(CALLBACK, params={"code": code, "state": state}), 401, "sso_invalid_state")
    # The state is spent by that refused attempt: even its own browser cannot use it now.
    problem(browser.get(CALLBACK, params={"code": code, "state": state}), 401, "sso_invalid_state")

    # A clean sign-in; then its callback replayed (same state and code) is refused ...
    started = browser.get("/api/v1/sso/start", params={"email": f"pat@{DOMAIN}"})
    back = sign_in_at_provider(browser, started.headers["location"], "pat-sub")
    assert browser.get(back.headers["location"]).status_code == 302
    problem(browser.get(back.headers["location"]), 401, "sso_invalid_state")
    # ... and the used code under a fresh, valid state is refused by the provider (codes work once).
    used_code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
    fresh = browser.get("/api/v1/sso/start", params={"email": f"pat@{DOMAIN}"})
    fresh_state = parse_qs(urlsplit(fresh.headers["location"]).query)["state"][0]
    problem(browser.get(CALLBACK, params={"code": used_code, "state": fresh_state}), 401, "sso_code_rejected")

    # Every refusal is in the tenant's audit trail (those whose state named the tenant).
    audit = client.get(
        f"/api/v1/tenants/{world.a.id}/audit",
        headers=world.a.members["owner"].headers,
        params={"action": "sso.sign_in_failed"},
    ).json()["items"]
    assert {entry["details"]["code"] for entry in audit} >= {"sso_invalid_state", "sso_code_rejected"}


def test_email_outside_the_allowed_domains_is_refused(client, browser, provider, world, aio):
    connection = create_connection(client, world, provider.issuer)
    started = browser.get("/api/v1/sso/start", params={"connection_id": connection["id"]})
    back = sign_in_at_provider(browser, started.headers["location"], "eve-sub")
    problem(browser.get(back.headers["location"]), 403, "sso_email_domain_not_allowed")
    assert browser.cookies.get("livora_session") is None

    async def eve() -> Any:
        async with world.runtime.services() as services:
            return await services.db.scalar(select(User).where(User.email == "eve@elsewhere.test"))

    assert aio(eve()) is None, "no account is created for a refused email"


def test_enforced_sso_refuses_passwords_of_the_tenants_domain_users(client, browser, provider, world, aio):
    # Pat has a password account and is a member of tenant A; Quinn (same domain) belongs to tenant B only.
    pat = _member_with_password(world, aio, f"pat@{DOMAIN}", world.a.id)
    _member_with_password(world, aio, f"quinn@{DOMAIN}", world.b.id)
    login = {"email": f"pat@{DOMAIN}", "password": PASSWORD}
    assert client.post("/api/v1/auth/login", json=login).status_code == 200

    connection = create_connection(client, world, provider.issuer, enforce_sso=True)
    refused = problem(client.post("/api/v1/auth/login", json=login), 403, "sso_required")
    assert "/login" in refused["detail"]
    # A wrong password still gets the generic answer: the refusal reveals nothing to a guesser.
    problem(client.post("/api/v1/auth/login", json={**login, "password": "wrong password!"}), 401, "invalid_login")
    # Users of the domain outside the tenant are not the tenant's to govern.
    quinn = client.post("/api/v1/auth/login", json={"email": f"quinn@{DOMAIN}", "password": PASSWORD})
    assert quinn.status_code == 200, quinn.text

    # Pat signs in through the provider instead, onto the same account (linked: A vouches for Pat).
    assert sso_sign_in(browser, "pat-sub", f"pat@{DOMAIN}").status_code == 302
    me = browser.get("/api/v1/auth/me").json()
    assert me["user"]["id"] == pat

    # Turning enforcement off gives the password back.
    off = client.patch(
        f"/api/v1/tenants/{world.a.id}/sso/connections/{connection['id']}",
        json={"enforce_sso": False},
        headers=world.a.members["admin"].headers,
    )
    assert off.status_code == 200, off.text
    assert client.post("/api/v1/auth/login", json=login).status_code == 200


def _member_with_password(world: World, aio: Any, email: str, tenant_id: str) -> str:
    from control_plane.db.models import User as UserRow
    from kernel.db import new_id
    from kernel.tenancy import tenant_scope

    async def add() -> str:
        password_hash = await world.runtime.passwords.hash(PASSWORD)
        async with world.runtime.services() as services:
            user = UserRow(id=new_id("usr"), email=email, name="", password_hash=password_hash)
            services.db.add(user)
            await services.db.flush()
            with tenant_scope(tenant_id):
                services.db.add(Membership(id=new_id("mem"), tenant_id=tenant_id, user_id=user.id, role="sales"))
                await services.db.commit()
            return user.id

    return str(aio(add()))


def test_a_password_account_elsewhere_is_not_taken_over(client, browser, provider, world, aio):
    """Tenant A's provider asserting the email of tenant B's member does not get B's account."""
    _member_with_password(world, aio, f"cy@{DOMAIN}", world.b.id)
    create_connection(client, world, provider.issuer)
    problem(sso_sign_in(browser, "cy-sub", f"cy@{DOMAIN}"), 409, "sso_account_conflict")


def test_connection_secret_is_encrypted_at_rest(client, provider, world, aio):
    connection = create_connection(client, world, provider.issuer)

    async def stored() -> SsoConnection:
        async with world.runtime.services() as services:
            with dangerously_unscoped():
                return await services.db.get(SsoConnection, connection["id"])

    row = aio(stored())
    assert CLIENT_SECRET not in row.client_secret_encrypted
    assert row.client_secret_encrypted.startswith("gAAAA")  # a Fernet token
    assert world.runtime.secret_box.decrypt(row.client_secret_encrypted) == CLIENT_SECRET
