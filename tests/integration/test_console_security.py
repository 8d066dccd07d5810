"""The console over HTTP: redirects, cookies, CSRF, CSP, the role-by-page matrix and foreign-tenant 404s."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from control_plane.console.security import CSRF_COOKIE, session_cookie
from control_plane.db.models import Membership
from control_plane.http import SESSION_COOKIE
from control_plane.settings import Settings
from kernel.db import new_id
from kernel.tenancy import tenant_scope
from tests.support.server import LiveServer
from tests.support.world import PASSWORD, Actor, World

CSRF_IN_PAGE = re.compile(r'name="_csrf" value="([0-9a-f]{64})"')
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
EVENT_HANDLER = re.compile(r"<[^>]+\s(on[a-z]+|hx-on[:\w-]*)\s*=", re.I)


def browser(server: LiveServer, actor: Actor | None = None) -> httpx.Client:
    """A client that behaves like a browser: cookies only, no bearer header."""
    client = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    if actor is not None:
        client.cookies.set(SESSION_COOKIE, actor.token)
    return client


@pytest.fixture
def ops(server: LiveServer, world: World) -> Iterator[httpx.Client]:
    with browser(server, world.platform["ops_admin"]) as client:
        yield client


def csrf_of(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = CSRF_IN_PAGE.search(page.text)
    assert match, page.text
    return match.group(1)


def test_root_redirects_to_the_console_and_anonymous_visitors_to_sign_in(server: LiveServer) -> None:
    with browser(server) as client:
        assert client.get("/").headers["location"] == "/console"
        home = client.get("/console")
        assert home.status_code == 303 and home.headers["location"] == "/console/login?next=%2Fconsole"
        tenant = client.get("/console/t/ten_x")
        assert tenant.headers["location"] == "/console/login?next=%2Fconsole%2Ft%2Ften_x"
        htmx = client.get("/console/account", headers={"HX-Request": "true"})
        assert htmx.status_code == 401 and htmx.headers["hx-redirect"].startswith("/console/login")


def test_every_page_has_a_strict_csp_and_no_inline_script(server: LiveServer, ops: httpx.Client, world: World) -> None:
    signed_in = [
        "/console",
        "/console/ops/tenants",
        "/console/ops/tenants/new",
        "/console/ops/cells",
        f"/console/t/{world.a.id}",
        *(f"/console/t/{world.a.id}/{page}" for page in ("members", "api-keys", "sources", "sso", "audit")),
        f"/console/t/{world.a.id}/sources/{world.a.source_id}",
        "/console/account",
        "/console/t/ten_missing",
        *(f"/console/finance{page}" for page in ("", "/draft", f"/draft?tenant_id={world.a.id}", "/usage", "/revenue")),
        f"/console/t/{world.a.id}/billing",
    ]
    anonymous = ["/console/login", "/console/forgot", "/console/reset?token=x", "/console/invite?token=x"]
    with browser(server) as visitor:
        responses = [(path, ops.get(path)) for path in signed_in] + [(path, visitor.get(path)) for path in anonymous]
    for path, response in responses:
        assert response.status_code in (200, 404), (path, response.status_code)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe" not in policy, policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert not INLINE_SCRIPT.search(response.text), (path, INLINE_SCRIPT.search(response.text))
        assert not EVENT_HANDLER.search(response.text), (path, EVENT_HANDLER.search(response.text))
        assert '"allowEval": false' in response.text
        # Every unsafe request from the page carries the token: forms by field, htmx by header.
        assert 'hx-headers=\'{"X-CSRF-Token": "' in response.text


def test_assets_are_served_by_the_app(server: LiveServer) -> None:
    with browser(server) as client:
        css = client.get("/console/static/console.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        script = client.get("/console/static/console.js")
        assert script.status_code == 200 and "livora_theme" in script.text
        assert client.get("/console/static/../routes.py").status_code == 404
        assert client.get("/console/static/templates/base.html").status_code == 404


def test_sign_in_by_form_sets_an_httponly_lax_cookie(server: LiveServer, world: World) -> None:
    email = world.outsider.email or ""
    with browser(server) as client:
        page = client.get("/console/login")
        assert CSRF_COOKIE in page.cookies
        token = CSRF_IN_PAGE.search(page.text).group(1)  # type: ignore[union-attr]
        step = client.post("/console/login", data={"_csrf": token, "email": email, "next": "/console/account"})
        assert step.status_code == 200 and 'id="password"' in step.text
        wrong = client.post("/console/login", data={"_csrf": token, "email": email, "password": "nope nope nope"})
        assert wrong.status_code == 401 and "incorrect" in wrong.text
        signed_in = client.post(
            "/console/login",
            data={"_csrf": token, "email": email, "password": PASSWORD, "next": "/console/account"},
        )
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/console/account"
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=lvs_") and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert client.get("/console/account").status_code == 200
        # After sign-in, `next` never leaves the console.
        evil = client.get("/console/login?next=//evil.example.com/")
        assert evil.headers["location"] == "/console"


def test_the_session_cookie_is_secure_unless_turned_off() -> None:
    header = session_cookie(Settings(), "lvs_x", 60).to_header()
    assert "Secure" in header and "HttpOnly" in header and "SameSite=lax" in header
    assert "Secure" not in session_cookie(Settings(cookie_secure=False), "lvs_x", 60).to_header()


def test_unsafe_requests_need_the_csrf_token(server: LiveServer, world: World) -> None:
    actor = world.platform["ops_viewer"]
    with browser(server, actor) as client:
        token = csrf_of(client, "/console/account")
        refused = client.post("/console/logout")
        assert refused.status_code == 403 and "expired or did not come from this site" in refused.text
        assert client.post("/console/logout", data={"_csrf": "0" * 64}).status_code == 403
        altered = token[:-1] + ("1" if token[-1] == "0" else "0")
        assert client.post("/console/logout", headers={"X-CSRF-Token": altered}).status_code == 403
        assert client.get("/console/account").status_code == 200, "a refused sign-out must not end the session"
        done = client.post("/console/logout", headers={"X-CSRF-Token": token, "HX-Request": "true"})
        assert done.status_code == 204 and done.headers["hx-redirect"].startswith("/console/login")
    # A token is bound to its session: another person's token is worthless.
    with browser(server, world.platform["finance"]) as other:
        assert other.post("/console/logout", data={"_csrf": token}).status_code == 403
    # Without any cookie there is nothing to match.
    with browser(server) as anonymous:
        assert anonymous.post("/console/login", data={"email": "x@example.com"}).status_code == 403


def test_the_api_refuses_non_json_bodies_sent_with_the_cookie(server: LiveServer, world: World) -> None:
    actor = world.platform["ops_admin"]
    body = '{"name": "Cross site", "provision": false}'
    with browser(server, actor) as client:
        for kind in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": kind} if kind else {}
            response = client.post("/api/v1/tenants", content=body, headers=headers)
            assert response.status_code == 415, (kind, response.text)
            assert response.json()["code"] == "unsupported_media_type"
        assert client.post("/api/v1/tenants", content=body, headers={"Content-Type": "application/json"}).is_success
    with httpx.Client(base_url=server.url, timeout=30) as api:
        # A bearer token cannot be sent by another site: the API stays as lenient as before for it.
        bearer = api.post("/api/v1/tenants", content=body, headers={**actor.headers, "Content-Type": "text/plain"})
        assert bearer.status_code != 415


# --- the role-by-page matrix ------------------------------------------------------------------------

PLATFORM_ROLES = ("ops_admin", "ops_viewer", "finance")
TENANT_ROLES = ("owner", "admin", "analyst", "marketer", "sales", "viewer")


ADMIN_PAGES = ("members", "api-keys", "sources", "sso", "audit", "create-key")


def _expected(page: str, who: str) -> int:
    platform = who in PLATFORM_ROLES
    member = who.startswith("a:")
    if page == "account":
        return 200
    if page == "tenants":
        return 200 if platform else 403
    if page == "new":
        return 200 if who == "ops_admin" else 403
    if page == "cells":
        return 200 if who in ("ops_admin", "ops_viewer") else 403
    if page in ("tenant", "foreign"):
        if page == "foreign":
            return 200 if platform else 404
        return 200 if platform or member else 404
    if page in ADMIN_PAGES:
        # The workspace admin pages, by the API's permission of each: ops_viewer reads all but sources (a
        # page for those who manage them), finance and the tenant's lesser roles see none.
        if who in ("ops_admin", "a:owner", "a:admin"):
            return 400 if page == "create-key" else 200
        if who == "ops_viewer" and page not in ("sources", "create-key"):
            return 200
        return 403 if platform or member else 404
    if page == "foreign-admin":
        return 200 if who in ("ops_admin", "ops_viewer") else 403 if who == "finance" else 404
    if page in ("finance", "finance-draft", "finance-usage", "finance-revenue"):
        # The API's billing (and usage) read across tenants: finance and Livora ops; no tenant role.
        return 200 if platform else 403
    if page == "billing":
        # A workspace's invoices: its owners and admins, and staff (invoices read).
        if platform or who in ("a:owner", "a:admin"):
            return 200
        return 403 if member else 404
    if page == "suspend":
        # A wrong typed confirmation: ops_admin reaches the check (422); the rest never get that far.
        if who == "ops_admin":
            return 422
        return 403 if platform or member else 404
    raise AssertionError(page)


def test_role_by_page_matrix(server: LiveServer, world: World) -> None:
    actors = {role: world.platform[role] for role in PLATFORM_ROLES}
    actors |= {f"a:{role}": world.a.members[role] for role in TENANT_ROLES}
    actors["outsider"] = world.outsider
    pages = {
        "account": ("GET", "/console/account"),
        "tenants": ("GET", "/console/ops/tenants"),
        "new": ("GET", "/console/ops/tenants/new"),
        "cells": ("GET", "/console/ops/cells"),
        "tenant": ("GET", f"/console/t/{world.a.id}"),
        "foreign": ("GET", f"/console/t/{world.b.id}"),
        "suspend": ("POST", f"/console/t/{world.a.id}/suspend"),
        "members": ("GET", f"/console/t/{world.a.id}/members"),
        "api-keys": ("GET", f"/console/t/{world.a.id}/api-keys"),
        "sources": ("GET", f"/console/t/{world.a.id}/sources"),
        "sso": ("GET", f"/console/t/{world.a.id}/sso"),
        "audit": ("GET", f"/console/t/{world.a.id}/audit"),
        # No name given: those allowed reach the form's check (400), the rest never get that far.
        "create-key": ("POST", f"/console/t/{world.a.id}/api-keys"),
        "foreign-admin": ("GET", f"/console/t/{world.b.id}/members"),
        "finance": ("GET", "/console/finance"),
        "finance-draft": ("GET", f"/console/finance/draft?tenant_id={world.a.id}"),
        "finance-usage": ("GET", "/console/finance/usage"),
        "finance-revenue": ("GET", "/console/finance/revenue"),
        "billing": ("GET", f"/console/t/{world.a.id}/billing"),
    }
    failures = []
    for who, actor in actors.items():
        with browser(server, actor) as client:
            token = csrf_of(client, "/console/account")
            for page, (method, path) in pages.items():
                response = client.request(method, path, data={"_csrf": token, "confirm": "wrong"})
                if response.status_code != _expected(page, who):
                    failures.append(f"{who} {method} {path}: {response.status_code}, expected {_expected(page, who)}")
                assert response.headers["content-type"].startswith("text/html"), (who, path)
    assert not failures, "\n".join(failures)


def test_a_foreign_tenant_page_is_the_same_404_as_a_missing_one(server: LiveServer, world: World) -> None:
    with browser(server, world.a.members["owner"]) as client:
        foreign = client.get(f"/console/t/{world.b.id}")
        missing = client.get("/console/t/ten_does_not_exist")
        assert foreign.status_code == missing.status_code == 404
        assert foreign.text.replace(world.b.id, "ID") == missing.text.replace("ten_does_not_exist", "ID")
        assert client.get(f"/console/t/{world.b.id}/runs/run_x").status_code == 404
    # The API says the same.
    with httpx.Client(base_url=server.url, timeout=30) as api:
        assert api.get(f"/api/v1/tenants/{world.b.id}", headers=world.a.members["owner"].headers).status_code == 404


def test_a_member_of_one_workspace_lands_in_it(server: LiveServer, world: World) -> None:
    with browser(server, world.a.members["viewer"]) as client:
        home = client.get("/console")
        assert home.status_code == 303 and home.headers["location"] == f"/console/t/{world.a.id}"
        page = client.get(home.headers["location"])
        assert page.status_code == 200 and "Tenant A" in page.text
        # No ops menu for tenant people, and no lifecycle actions.
        assert "/console/ops/tenants" not in page.text and "Lifecycle" not in page.text
    with browser(server, world.outsider) as client:
        empty = client.get("/console")
        assert empty.status_code == 200 and "not in any workspace yet" in empty.text


def test_unknown_console_pages_are_pages_too(server: LiveServer, world: World) -> None:
    with browser(server, world.platform["ops_viewer"]) as client:
        for path in ("/console/nope", "/console/ops/nope/deeper"):
            response = client.get(path)
            assert response.status_code == 404 and response.headers["content-type"].startswith("text/html"), path
            assert "There is no such page" in response.text
        assert client.get("/console").status_code == 200
        assert client.get("/console/static/console.css").status_code == 200
        assert client.get("/api/v1/nope").headers["content-type"].startswith("application/problem+json")


def test_the_tenant_switcher_lists_every_workspace(
    server: LiveServer, world: World, aio: Callable[[Awaitable[Any]], Any]
) -> None:
    actor = world.a.members["sales"]

    async def join_b() -> None:
        async with world.runtime.services() as services:
            with tenant_scope(world.b.id):
                services.db.add(
                    Membership(id=new_id("mem"), tenant_id=world.b.id, user_id=actor.user_id or "", role="viewer")
                )
                await services.db.commit()

    aio(join_b())
    with browser(server, actor) as client:
        home = client.get("/console")
        assert home.status_code == 200 and "Your workspaces" in home.text
        page = client.get(f"/console/t/{world.b.id}")
        switcher = re.search(r'<select id="tenant-switcher".*?</select>', page.text, re.S).group(0)  # type: ignore[union-attr]
        assert "Tenant A (sales)" in switcher and "Tenant B (viewer)" in switcher
        assert re.search(rf'value="{world.b.id}" selected', switcher)
        switched = client.get("/console/switch", params={"tenant_id": world.a.id})
        assert switched.status_code == 303 and switched.headers["location"] == f"/console/t/{world.a.id}"
        # The switcher is only a link: a foreign workspace stays 404.
        assert (
            client.get(client.get("/console/switch", params={"tenant_id": "ten_other"}).headers["location"]).status_code
            == 404
        )
