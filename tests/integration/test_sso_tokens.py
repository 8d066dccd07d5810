"""ID-token checks over real HTTP: a small provider whose tokens each test shapes (issuer, audience, nonce,
expiry, signing key, key rotation). Token checks do not depend on the database: SQLite only."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from sqlalchemy import select

from control_plane.db.models import UserSession
from control_plane.identity.secrets import token_hash
from kernel.db import utcnow
from tests.support.api import problem, set_columns
from tests.support.oidc import FakeProvider, fixtures
from tests.support.oidc.fake import new_key
from tests.support.world import World

settings, server, browser = fixtures.settings, fixtures.server, fixtures.browser

CLIENT_ID = "livora-fake"
CLIENT_SECRET = "fake provider secret"
DOMAIN = "fake.test"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def idp() -> Iterator[FakeProvider]:
    provider = FakeProvider(CLIENT_ID, CLIENT_SECRET).start()
    provider.account = {"sub": "user-1", "email": f"lee@{DOMAIN}", "email_verified": True, "name": "Lee"}
    yield provider
    provider.stop()


@pytest.fixture
def connection(client: httpx.Client, world: World, idp: FakeProvider) -> dict[str, Any]:
    response = client.post(
        f"/api/v1/tenants/{world.a.id}/sso/connections",
        json={
            "issuer": idp.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "allowed_domains": [DOMAIN],
        },
        headers=world.a.members["admin"].headers,
    )
    assert response.status_code == 201, response.text
    return response.json()


def sign_in(browser: httpx.Client) -> httpx.Response:
    started = browser.get("/api/v1/sso/start", params={"email": f"lee@{DOMAIN}"})
    assert started.status_code == 302, started.text
    at_provider = browser.get(started.headers["location"])
    assert at_provider.status_code == 302, at_provider.text
    return browser.get(at_provider.headers["location"])


def test_a_good_token_signs_in(browser, idp, connection, world):
    assert sign_in(browser).status_code == 302
    me = browser.get("/api/v1/auth/me").json()
    assert me["user"]["email"] == f"lee@{DOMAIN}"
    assert [(m["tenant_id"], m["role"]) for m in me["memberships"]] == [(world.a.id, "viewer")]


NOW = int(time.time())


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        pytest.param({"nonce": "a-nonce-of-another-sign-in"}, "sso_nonce_mismatch", id="wrong-nonce"),
        pytest.param({"nonce": None}, "sso_nonce_mismatch", id="no-nonce"),
        pytest.param({"iss": "http://127.0.0.1:9/another-issuer"}, "sso_wrong_issuer", id="other-issuer"),
        pytest.param({"aud": "another-client"}, "sso_wrong_audience", id="wrong-audience"),
        pytest.param({"aud": [CLIENT_ID, "another-client"]}, "sso_wrong_audience", id="shared-audience-no-azp"),
        pytest.param({"azp": "another-client"}, "sso_wrong_audience", id="wrong-azp"),
        pytest.param({"exp": NOW - 3600, "iat": NOW - 3900}, "sso_token_expired", id="expired"),
        pytest.param({"iat": NOW + 3600, "exp": NOW + 7200}, "sso_invalid_token", id="issued-in-the-future"),
        pytest.param({"sub": None}, "sso_invalid_token", id="no-subject"),
    ],
)
def test_bad_claims_are_refused(browser, idp, connection, overrides, code):
    idp.overrides = overrides
    problem(sign_in(browser), 401, code)
    assert browser.cookies.get("livora_session") is None
    problem(browser.get("/api/v1/auth/me"), 401, "not_authenticated")


def test_unverified_email_is_refused(browser, idp, connection):
    idp.account["email_verified"] = False
    problem(sign_in(browser), 403, "sso_email_unverified")


def test_unknown_signing_key_is_refused_and_refetches_are_rate_limited(browser, idp, connection):
    assert sign_in(browser).status_code == 302
    assert idp.jwks_hits == 1
    # Signed with a key the provider does not publish: one refetch of the JWKS, then refused.
    idp.signing_key = new_key("rogue-key")
    problem(sign_in(browser), 401, "sso_unknown_signing_key")
    assert idp.jwks_hits == 2
    # Another unknown key at once: refused without hitting the provider again (one refetch per interval).
    idp.signing_key = new_key("another-rogue-key")
    problem(sign_in(browser), 401, "sso_unknown_signing_key")
    assert idp.jwks_hits == 2


def test_a_rotated_key_is_fetched_and_accepted(browser, idp, connection):
    assert sign_in(browser).status_code == 302
    assert idp.jwks_hits == 1
    idp.rotate("key-2")
    assert sign_in(browser).status_code == 302
    assert idp.jwks_hits == 2, "the unknown kid made us refetch the keys once"
    # Known now: no more fetches.
    assert sign_in(browser).status_code == 302
    assert idp.jwks_hits == 2


def test_a_token_of_another_provider_is_refused(browser, idp, connection):
    """A token genuinely issued by another provider (its key, its issuer, even the same kid) is refused."""
    other = FakeProvider(CLIENT_ID, CLIENT_SECRET).start()
    try:
        idp.signing_key = other.signing_key  # same kid ("key-1"), different key
        idp.overrides = {"iss": other.issuer}
        problem(sign_in(browser), 401, "sso_invalid_signature")
    finally:
        other.stop()


def test_pkce_verifier_and_client_secret_reach_the_provider(browser, idp, connection, world, client):
    """The fake provider checks the S256 verifier and Basic client credentials; a wrong stored secret fails."""
    changed = client.patch(
        f"/api/v1/tenants/{world.a.id}/sso/connections/{connection['id']}",
        json={"client_secret": "not the secret"},
        headers=world.a.members["admin"].headers,
    )
    assert changed.status_code == 200, changed.text
    problem(sign_in(browser), 401, "sso_code_rejected")


def test_unsigned_tokens_are_refused(browser, idp, connection, monkeypatch):
    """`alg: none` never passes, whatever the claims."""
    original = idp.token

    def unsigned(form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        status, body = original(form, authorization)
        if status == 200:
            claims = jwt.decode(body["id_token"], idp.signing_key).claims

            def part(value: dict[str, Any]) -> str:
                return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

            body["id_token"] = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
        return status, body

    monkeypatch.setattr(idp, "token", unsigned)
    problem(sign_in(browser), 401, "sso_invalid_signature")


def test_roles_follow_the_providers_claims(client, browser, idp, world):
    """The mapped role is given at the first sign-in and follows the claim on later ones."""
    owner = world.a.members["owner"]
    created = client.post(
        f"/api/v1/tenants/{world.a.id}/sso/connections",
        json={
            "issuer": idp.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "allowed_domains": [DOMAIN],
            "role_claim": "groups",
            "role_mapping": {"it": "admin", "growth": "marketer", "founders": "owner"},
            "default_role": "viewer",
        },
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text

    def role_after_sign_in(groups: list[str] | None) -> str:
        idp.account["groups"] = groups
        if groups is None:
            idp.account.pop("groups")
        assert sign_in(browser).status_code == 302
        memberships = browser.get("/api/v1/auth/me").json()["memberships"]
        assert [m["tenant_id"] for m in memberships] == [world.a.id]
        return str(memberships[0]["role"])

    assert role_after_sign_in(["growth", "it"]) == "admin"
    assert role_after_sign_in(["growth"]) == "marketer"
    assert role_after_sign_in(["founders", "it"]) == "owner"
    # Claims that map to nothing leave the role as it is (it may have been set in Livora).
    assert role_after_sign_in(["unmapped"]) == "owner"
    assert role_after_sign_in(None) == "owner"
    assert role_after_sign_in(["it"]) == "admin"
    changes = client.get(
        f"/api/v1/tenants/{world.a.id}/audit", headers=owner.headers, params={"action": "member.role_changed"}
    ).json()["items"]
    assert len(changes) == 3 and all(entry["details"]["via"] == "sso" for entry in changes)


def test_return_to_stays_on_this_site(browser, idp, connection):
    started = browser.get("/api/v1/sso/start", params={"email": f"lee@{DOMAIN}", "return_to": "/console?tab=1"})
    finished = browser.get(browser.get(started.headers["location"]).headers["location"])
    assert finished.headers["location"] == "/console?tab=1"
    started = browser.get("/api/v1/sso/start", params={"email": f"lee@{DOMAIN}", "return_to": "https://evil.test/"})
    finished = browser.get(browser.get(started.headers["location"]).headers["location"])
    assert finished.headers["location"] == "/login"


def test_an_expired_sso_session_ends_like_any_other(browser, idp, connection, world, aio):
    assert sign_in(browser).status_code == 302
    digest = token_hash(browser.cookies.get("livora_session") or "")

    async def session_id() -> str:
        async with world.runtime.services() as services:
            return str(await services.db.scalar(select(UserSession.id).where(UserSession.token_hash == digest)))

    set_columns(world, aio, UserSession, aio(session_id()), expires_at=utcnow() - dt.timedelta(seconds=1))
    problem(browser.get("/api/v1/auth/me"), 401, "invalid_session")
