"""Workspace admin pages over HTTP: members and invitations, API keys, sources and snippets, SSO and its test,
the audit log's filters; each through the API's services, refusals as pages."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from control_plane.api_keys.schemas import ApiKeyCreate
from control_plane.console.routes import PAGE_SIZE
from control_plane.http import SESSION_COOKIE
from control_plane.settings import Settings
from tests.support.api import outbox
from tests.support.oidc import FakeProvider, fixtures
from tests.support.server import LiveServer
from tests.support.world import Actor, World

# SSO's fixtures: local issuers allowed and the public URL the live server really has (redirect URIs).
settings, server = fixtures.settings, fixtures.server

CSRF_IN_PAGE = re.compile(r'name="_csrf" value="([0-9a-f]{64})"')
SECRET = re.compile(r'<code id="new-secret"[^>]*>(lvk_[A-Za-z0-9_-]+)</code>')
WRITE_KEY = re.compile(r'<code id="write-key"[^>]*>(lvw_[A-Za-z0-9_-]+)</code>')


class Console:
    """A browser's view: the session cookie only, and the page's CSRF token on every form."""

    def __init__(self, server: LiveServer, actor: Actor) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
        self.http.cookies.set(SESSION_COOKIE, actor.token)
        page = self.http.get("/console/account")
        self.csrf = CSRF_IN_PAGE.search(page.text).group(1)  # type: ignore[union-attr]

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.http.get(path, params=params)

    def post(self, path: str, data: dict[str, str | list[str]] | None = None) -> httpx.Response:
        return self.http.post(path, data={"_csrf": self.csrf, **(data or {})})


@pytest.fixture
def owner(server: LiveServer, world: World) -> Iterator[Console]:
    console = Console(server, world.a.members["owner"])
    yield console
    console.http.close()


@pytest.fixture
def admin(server: LiveServer, world: World) -> Iterator[Console]:
    console = Console(server, world.a.members["admin"])
    yield console
    console.http.close()


def api(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {token}"})


def text(response: httpx.Response) -> str:
    return html.unescape(response.text)


# --- members and invitations ----------------------------------------------------------------------


def test_an_admin_invites_changes_roles_and_withdraws_invitations(
    admin: Console, owner: Console, world: World, settings: Settings, server: LiveServer
) -> None:
    base = f"/console/t/{world.a.id}"
    page = admin.get(f"{base}/members")
    assert page.status_code == 200
    assert world.a.members["viewer"].email in page.text and "No invitations yet." in page.text
    # Admins are not offered the owner role; forcing it is refused as the API refuses it.
    assert '<option value="owner"' not in page.text
    refused = admin.post(f"{base}/members/invite", {"email": "boss@example.com", "role": "owner"})
    assert refused.status_code == 403 and "Only an owner can invite an owner." in refused.text
    bad = admin.post(f"{base}/members/invite", {"email": "not an email", "role": "analyst"})
    assert bad.status_code == 400 and 'value="not an email"' in bad.text
    sent = admin.post(f"{base}/members/invite", {"email": "New.Person@Example.com", "role": "analyst"})
    assert sent.status_code == 200 and "Invitation mailed to new.person@example.com as analyst." in sent.text
    mail = [m for m in outbox(settings) if m["to"] == "new.person@example.com"][-1]["text"]
    assert "/console/invite?token=lvi_" in mail
    again = admin.post(f"{base}/members/invite", {"email": world.a.members["sales"].email or "", "role": "viewer"})
    assert again.status_code == 409 and "already a member" in again.text

    viewer = world.a.members["viewer"]
    changed = admin.post(f"{base}/members/{viewer.user_id}/role", {"role": "marketer"})
    assert changed.status_code == 200 and f"{viewer.email} is now marketer." in changed.text
    with api(server, admin_token(world)) as client:
        members = client.get(f"/api/v1/tenants/{world.a.id}/members").json()["items"]
    assert {m["email"]: m["role"] for m in members}[viewer.email] == "marketer"
    assert admin.post(f"{base}/members/{viewer.user_id}/role", {"role": "emperor"}).status_code == 400

    # An owner may hand over ownership, but the last owner cannot step down.
    sole = world.a.members["owner"]
    last = owner.post(f"{base}/members/{sole.user_id}/role", {"role": "admin"})
    assert last.status_code == 409 and "at least one owner" in last.text
    assert admin.post(f"{base}/members/{sole.user_id}/remove").status_code == 403

    invite_id = re.search(r"/invites/(inv_[a-z0-9]+)/revoke", sent.text).group(1)  # type: ignore[union-attr]
    withdrawn = admin.post(f"{base}/invites/{invite_id}/revoke")
    assert withdrawn.status_code == 200 and "was withdrawn" in withdrawn.text
    assert "status-revoked" in withdrawn.text
    assert admin.post(f"{base}/invites/inv_nope/revoke").status_code == 404

    removed = admin.post(f"{base}/members/{world.a.members['sales'].user_id}/remove")
    assert removed.status_code == 200 and f"{world.a.members['sales'].email} was removed." in removed.text
    assert world.a.members["sales"].email not in removed.text.split("Invitations")[0].split("was removed.")[1]


def admin_token(world: World) -> str:
    return world.a.members["admin"].token


# --- API keys -------------------------------------------------------------------------------------


def test_an_api_key_secret_is_shown_once_and_works_until_rotated_or_revoked(
    admin: Console, world: World, server: LiveServer
) -> None:
    base = f"/console/t/{world.a.id}/api-keys"
    empty_scopes = admin.post(base, {"name": "exporter"})
    assert empty_scopes.status_code == 400 and "Choose at least one scope." in empty_scopes.text
    assert 'value="exporter"' in empty_scopes.text, "what was typed stays"
    past = admin.post(base, {"name": "late", "scopes": ["tenant:read"], "expires_on": "2001-01-01"})
    assert past.status_code == 400 and "expires_at must be in the future." in past.text
    nonsense = admin.post(base, {"name": "odd", "scopes": ["tenant:read"], "expires_on": "next tuesday"})
    assert nonsense.status_code == 400 and "2027-01-31" in nonsense.text
    unknown_scope = admin.post(base, {"name": "odd", "scopes": ["members:write"]})
    assert unknown_scope.status_code == 400

    expiry = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    created = admin.post(base, {"name": "exporter", "scopes": ["tenant:read", "audit:read"], "expires_on": expiry})
    assert created.status_code == 200, created.text
    secret = SECRET.search(created.text).group(1)  # type: ignore[union-attr]
    assert "shown this once" in created.text and 'data-copy="new-secret"' in created.text
    with api(server, secret) as client:
        assert client.get(f"/api/v1/tenants/{world.a.id}").status_code == 200
        assert client.get(f"/api/v1/tenants/{world.a.id}/members").status_code == 403
    listed = admin.get(base)
    assert secret not in listed.text, "the secret is never shown again"
    row = re.search(r"<tr>\s*<td>exporter</td>.*?</tr>", listed.text, re.S).group(0)  # type: ignore[union-attr]
    assert f"{expiry} 00:00 UTC" in row and "audit:read" in row
    # Used just now: the list says when.
    assert "never" not in row.split("</td>")[6]

    key_id = re.search(r"/api-keys/(key_[a-z0-9]+)/rotate", row).group(1)  # type: ignore[union-attr]
    rotated = admin.post(f"{base}/{key_id}/rotate", {"grace_period_seconds": "0"})
    new_secret = SECRET.search(rotated.text).group(1)  # type: ignore[union-attr]
    assert new_secret != secret
    too_long = admin.post(f"{base}/{key_id}/rotate", {"grace_period_seconds": str(10**9)})
    assert too_long.status_code == 400 and "grace_period_seconds may be at most" in too_long.text
    with api(server, secret) as old, api(server, new_secret) as new:
        assert old.get(f"/api/v1/tenants/{world.a.id}").status_code == 401
        assert new.get(f"/api/v1/tenants/{world.a.id}").status_code == 200
        revoked = admin.post(f"{base}/{key_id}/revoke")
        assert revoked.status_code == 200 and "was revoked" in revoked.text
        assert new.get(f"/api/v1/tenants/{world.a.id}").status_code == 401
    assert admin.post(f"{base}/{key_id}/rotate").status_code == 409
    # Another tenant's key is not found here.
    assert admin.post(f"{base}/{world.b.key_ids['key_all']}/revoke").status_code == 404


# --- sources --------------------------------------------------------------------------------------


def test_a_source_gives_its_write_key_once_in_snippets_that_name_the_cell(
    admin: Console, world: World, settings: Settings
) -> None:
    base = f"/console/t/{world.a.id}/sources"
    bad_origin = admin.post(base, {"name": "shop", "kind": "web", "allowed_origins": "shop.example.com/path"})
    assert bad_origin.status_code == 400 and "such as https://shop.example.com" in bad_origin.text
    nameless = admin.post(base, {"name": "", "kind": "web"})
    assert nameless.status_code == 400 and "name:" in nameless.text
    created = admin.post(
        base, {"name": "shop", "kind": "web", "allowed_origins": "https://shop.example.com\nhttp://localhost:3000"}
    )
    assert created.status_code == 200, created.text
    key = WRITE_KEY.search(created.text).group(1)  # type: ignore[union-attr]
    page = text(created)
    cell = settings.builtin_cell_ingest_url
    assert f'livora.load("{key}", {{ host: "{cell}" }});' in page
    assert f'apiKey: "{key}", apiHost: "127.0.0.1:8001/v1", protocol: "http"' in page
    assert f'curl -u "{key}:" {cell}/v1/track' in page
    source_id = re.search(r"/sources/(src_[a-z0-9]+)/rotate", page).group(1)  # type: ignore[union-attr]

    again = text(admin.get(f"{base}/{source_id}"))
    assert key not in again and 'livora.load("YOUR_WRITE_KEY"' in again
    assert "http://localhost:3000\nhttps://shop.example.com</textarea>" in again
    listed = admin.get(base)
    assert f"{base}/{source_id}" in listed.text and key[:12] in listed.text and key not in listed.text

    wrong = admin.post(f"{base}/{source_id}/origins", {"allowed_origins": "ftp://files.example.com"})
    assert wrong.status_code == 400 and "such as https://shop.example.com" in wrong.text
    saved = admin.post(f"{base}/{source_id}/origins", {"allowed_origins": "https://www.example.com"})
    assert saved.status_code == 200 and "Allowed origins saved." in saved.text
    rotated = admin.post(f"{base}/{source_id}/rotate", {"grace_period_seconds": "3600"})
    new_key = WRITE_KEY.search(rotated.text).group(1)  # type: ignore[union-attr]
    assert new_key != key and "the previous key works until" in rotated.text
    revoked = admin.post(f"{base}/{source_id}/revoke")
    assert revoked.status_code == 200 and "status-revoked" in revoked.text and "Rotate the key" not in revoked.text

    server_source = text(admin.post(base, {"name": "backend", "kind": "server"}))
    server_key = WRITE_KEY.search(server_source).group(1)  # type: ignore[union-attr]
    assert f'new Analytics({{ writeKey: "{server_key}", host: "{cell}" }})' in server_source
    assert f'analytics.host = "{cell}"' in server_source and "Allowed origins" not in server_source
    mobile = text(admin.post(base, {"name": "app", "kind": "mobile"}))
    assert '.apiHost("127.0.0.1:8001/v1")' in mobile
    assert admin.get(f"/console/t/{world.a.id}/sources/{world.b.source_id}").status_code == 404


# --- single sign-on -------------------------------------------------------------------------------


@pytest.fixture
def idp() -> Iterator[FakeProvider]:
    provider = FakeProvider("livora-client", "the secret").start()
    yield provider
    provider.stop()


def test_an_sso_connection_is_set_up_and_tested_from_its_page(
    admin: Console, world: World, idp: FakeProvider, server: LiveServer
) -> None:
    base = f"/console/t/{world.a.id}/sso"
    page = admin.get(base)
    assert page.status_code == 200 and "No single sign-on yet." in page.text
    assert f"{server.url}/api/v1/sso/callback" in page.text, "the redirect URI to register at the provider"
    form = {
        "name": "Acme login",
        "issuer": idp.issuer,
        "client_id": "livora-client",
        "client_secret": "the secret",
        "allowed_domains": "acme.test, Acme.Example",
        "default_role": "analyst",
    }
    no_openid_domain = admin.post(base, {**form, "allowed_domains": "not a domain"})
    assert no_openid_domain.status_code == 400
    assert "allowed_domains: expected lower-case email domains such as example.com." in no_openid_domain.text
    assert "the secret" not in no_openid_domain.text, "the client secret is never sent back"
    owner_grant = admin.post(base, {**form, "default_role": "owner"})
    assert owner_grant.status_code == 403
    created = admin.post(base, form)
    assert created.status_code == 200 and "Acme login was connected." in created.text
    assert "acme.example, acme.test" in created.text and "never tested" in created.text
    connection_id = re.search(r"/sso/(sso_[a-z0-9]+)/test", created.text).group(1)  # type: ignore[union-attr]

    tested = text(admin.post(f"{base}/{connection_id}/test"))
    assert "The provider answered." in tested and "discovery document and 1 signing key (RS256)" in tested
    idp.stop()
    failed = text(admin.post(f"{base}/{connection_id}/test"))
    assert "The test failed (sso_provider_unavailable)." in failed and "failed, " in failed

    bad_issuer = admin.post(f"{base}/{connection_id}/update", {"issuer": "not a url"})
    assert bad_issuer.status_code == 400 and "issuer: expected an http or https address" in bad_issuer.text
    assert "regex" not in bad_issuer.text
    saved = text(
        admin.post(
            f"{base}/{connection_id}/update",
            {"allowed_domains": "acme.test", "role_claim": "groups", "default_role": "viewer", "enforce_sso": "on"},
        )
    )
    assert "Acme login was saved." in saved and "refused for these domains (SSO enforced)" in saved
    assert "from the <code>groups</code> claim, else viewer" in saved
    off = admin.post(f"{base}/{connection_id}/enabled", {"enabled": "false"})
    assert "Acme login is off" in off.text and "Turn on" in off.text
    with api(server, world.a.members["admin"].token) as client:
        stored = client.get(f"/api/v1/tenants/{world.a.id}/sso/connections/{connection_id}").json()
    assert stored["enabled"] is False and stored["last_test_ok"] is False
    assert stored["allowed_domains"] == ["acme.test"] and stored["enforce_sso"] is True
    assert stored["client_secret_set"] is True, "an empty secret field keeps the stored secret"
    removed = admin.post(f"{base}/{connection_id}/delete")
    assert removed.status_code == 200 and "No single sign-on yet." in removed.text
    assert admin.post(f"{base}/{connection_id}/test").status_code == 404


# --- audit log ------------------------------------------------------------------------------------


def test_the_audit_log_filters_by_action_outcome_actor_and_dates(admin: Console, world: World) -> None:
    base = f"/console/t/{world.a.id}"
    admin.post(f"{base}/api-keys", {"name": "audited", "scopes": ["tenant:read"]})
    admin.post(f"{base}/members/invite", {"email": "someone@example.com", "role": "viewer"})
    # A refused change is in the trail too.
    admin.post(f"{base}/members/{world.a.members['owner'].user_id}/remove")
    everything = admin.get(f"{base}/audit")
    assert everything.status_code == 200
    assert "api_key.created" in everything.text and "invite.created" in everything.text
    created = admin.get(f"{base}/audit", action="api_key.created")
    actions = set(re.findall(r"<code>([a-z_]+\.[a-z_.]+)</code>", created.text))
    assert actions == {"api_key.created"}, actions
    denied = admin.get(f"{base}/audit", outcome="denied")
    assert "member.removed" in denied.text and "invite.created" not in denied.text
    mine = admin.get(f"{base}/audit", actor_id=world.a.members["admin"].user_id or "")
    assert "invite.created" in mine.text and "source.created" not in mine.text
    today = dt.date.today()
    assert "api_key.created" in admin.get(f"{base}/audit", since=today.isoformat(), until=today.isoformat()).text
    before = admin.get(f"{base}/audit", until=(today - dt.timedelta(days=2)).isoformat())
    assert "No entry matches these filters." in before.text
    # Nonsense filters are ignored, never a 500; another tenant's trail is not reachable.
    assert admin.get(f"{base}/audit", outcome="bogus", since="yesterday").status_code == 200
    assert admin.get(f"/console/t/{world.b.id}/audit").status_code == 404


def test_the_menu_shows_the_admin_pages_a_role_may_open(server: LiveServer, world: World) -> None:
    pages = ("Members", "API keys", "Sources", "Single sign-on", "Audit log")
    for role, shown in (("owner", pages), ("admin", pages), ("analyst", ()), ("viewer", ())):
        console = Console(server, world.a.members[role])
        menu = re.search(r'<nav class="sidenav".*?</nav>', console.get(f"/console/t/{world.a.id}").text, re.S)
        labels = tuple(p for p in pages if f">{p}</a>" in menu.group(0))  # type: ignore[union-attr]
        assert labels == shown, (role, labels)
        console.http.close()


def test_admin_forms_need_the_csrf_token(server: LiveServer, world: World, admin: Console) -> None:
    base = f"/console/t/{world.a.id}"
    forged = {"name": "forged", "scopes": "tenant:read"}
    for path, data in (
        (f"{base}/api-keys", forged),
        (f"{base}/sources", {"name": "forged", "kind": "server"}),
        (f"{base}/members/invite", {"email": "forged@example.com", "role": "admin"}),
    ):
        refused = admin.http.post(path, data=data)
        assert refused.status_code == 403 and "did not come from this site" in refused.text, path
        assert admin.http.post(path, data={**data, "_csrf": "0" * 64}).status_code == 403, path
    assert "forged" not in admin.get(f"{base}/api-keys").text
    assert "forged" not in admin.get(f"{base}/sources").text
    assert "forged@example.com" not in admin.get(f"{base}/members").text


def test_staff_who_only_read_see_the_admin_pages_without_their_forms(server: LiveServer, world: World) -> None:
    console = Console(server, world.platform["ops_viewer"])
    base = f"/console/t/{world.a.id}"
    for page in ("members", "api-keys", "sso", "audit"):
        response = console.get(f"{base}/{page}")
        assert response.status_code == 200, page
        assert 'method="post" action="/console/t/' not in response.text, page
    assert console.post(f"{base}/members/invite", {"email": "x@example.com", "role": "viewer"}).status_code == 403
    console.http.close()


def test_the_key_list_pages_from_its_own_address_after_a_form(
    admin: Console, world: World, aio: Callable[[Awaitable[Any]], Any]
) -> None:
    async def many() -> None:
        async with world.runtime.services() as services:
            for n in range(PAGE_SIZE):
                await services.api_keys.create(
                    world.a.id, ApiKeyCreate(name=f"bulk {n:02}", scopes=["tenant:read"]), None
                )

    aio(many())
    base = f"/console/t/{world.a.id}/api-keys"
    revoked = admin.post(f"{base}/{world.a.key_ids['key_read_tenant']}/revoke")
    next_url = html.unescape(re.search(r'href="([^"]+cursor=[^"]+)"', revoked.text).group(1))  # type: ignore[union-attr]
    assert next_url.startswith(f"{base}?cursor=")
    older = admin.http.get(next_url)
    assert older.status_code == 200 and "key_all" in older.text and "bulk 24" not in older.text
