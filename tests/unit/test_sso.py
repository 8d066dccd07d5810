"""SSO pure logic: ID-token claim checks, URL rules, PKCE, role mapping, return paths, secret encryption."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.fernet import Fernet

from control_plane.runtime import Runtime
from control_plane.settings import Settings
from control_plane.sso.crypto import SecretBox, secret_box
from control_plane.sso.oidc import check_claims, check_url, pkce_pair
from control_plane.sso.service import SsoService, claim_at, mapped_role, safe_return_to
from kernel.errors import AppError, ConfigError, Unavailable, ValidationFailed

ISSUER = "https://idp.example.com"
NOW = 1_800_000_000.0


def claims(**changes: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": "client", "sub": "u1", "iat": NOW - 5, "exp": NOW + 300, "nonce": "n-1"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def check(token_claims: dict[str, Any]) -> dict[str, Any]:
    return check_claims(token_claims, issuer=ISSUER, client_id="client", nonce="n-1", now=NOW, max_age_seconds=600)


def code_of(token_claims: dict[str, Any]) -> str:
    with pytest.raises(AppError) as raised:
        check(token_claims)
    return raised.value.code


def test_good_claims_pass():
    assert check(claims())["sub"] == "u1"
    assert check(claims(aud=["client"]))["sub"] == "u1"
    assert check(claims(aud=["client", "other"], azp="client"))["sub"] == "u1"
    # Within the clock-skew leeway.
    assert check(claims(exp=NOW - 30))["sub"] == "u1"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"iss": "https://evil.example.com"}, "sso_wrong_issuer"),
        ({"iss": None}, "sso_wrong_issuer"),
        ({"aud": "other"}, "sso_wrong_audience"),
        ({"aud": ["other"]}, "sso_wrong_audience"),
        ({"aud": None}, "sso_wrong_audience"),
        ({"aud": ["client", "other"]}, "sso_wrong_audience"),
        ({"azp": "other"}, "sso_wrong_audience"),
        ({"exp": NOW - 120}, "sso_token_expired"),
        ({"exp": None}, "sso_invalid_token"),
        ({"exp": "tomorrow"}, "sso_invalid_token"),
        ({"exp": True}, "sso_invalid_token"),
        ({"iat": NOW + 3600}, "sso_invalid_token"),
        ({"iat": NOW - 7200}, "sso_token_expired"),
        ({"iat": None}, "sso_invalid_token"),
        ({"nbf": NOW + 3600}, "sso_invalid_token"),
        ({"nonce": "n-2"}, "sso_nonce_mismatch"),
        ({"nonce": None}, "sso_nonce_mismatch"),
        ({"nonce": 1}, "sso_nonce_mismatch"),
        ({"sub": None}, "sso_invalid_token"),
        ({"sub": ""}, "sso_invalid_token"),
        ({"sub": "x" * 256}, "sso_invalid_token"),
    ],
)
def test_bad_claims_are_refused_with_their_code(changes, code):
    assert code_of(claims(**changes)) == code


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com",
        "https://localhost/realm",
        "https://127.0.0.1",
        "https://10.1.2.3",
        "https://169.254.169.254/latest",
        "https://[::1]/",
        "https://user:pass@idp.example.com",
        "ftp://idp.example.com",
        "https://idp.example.com/#frag",
        "idp.example.com",
        "https://metadata.internal/",
    ],
)
def test_issuer_urls_pointing_inside_are_refused(url):
    with pytest.raises(ValidationFailed) as raised:
        check_url(url, allow_local=False)
    assert raised.value.code == "sso_invalid_url"


def test_public_issuers_pass_and_local_ones_when_allowed():
    assert check_url("https://login.example.com/tenant/v2.0", allow_local=False)
    assert check_url("https://8.8.8.8/", allow_local=False)
    assert check_url("http://127.0.0.1:8080", allow_local=True)
    with pytest.raises(ValidationFailed):
        check_url("ftp://127.0.0.1", allow_local=True)


def test_pkce_pair_is_s256():
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert challenge == expected
    assert pkce_pair()[0] != verifier


def test_role_mapping_picks_the_highest_matching_role():
    connection = SimpleNamespace(
        role_claim="groups",
        role_mapping={"eng": "analyst", "it-admins": "admin", "sales": "sales"},
        default_role="viewer",
    )
    assert mapped_role(connection, {"groups": ["eng", "it-admins"]}) == ("admin", True)
    assert mapped_role(connection, {"groups": "sales"}) == ("sales", True)
    assert mapped_role(connection, {"groups": ["unknown"]}) == ("viewer", False)
    assert mapped_role(connection, {}) == ("viewer", False)
    assert mapped_role(connection, {"groups": [1, None, "eng"]}) == ("analyst", True)
    nested = SimpleNamespace(role_claim="realm_access.roles", role_mapping={"lv-owner": "owner"}, default_role="viewer")
    assert mapped_role(nested, {"realm_access": {"roles": ["lv-owner"]}}) == ("owner", True)
    no_claim = SimpleNamespace(role_claim=None, role_mapping={"x": "admin"}, default_role="analyst")
    assert mapped_role(no_claim, {"x": "x"}) == ("analyst", False)


def test_claim_paths():
    assert claim_at({"a.b": 1, "a": {"b": 2}}, "a.b") == 1
    assert claim_at({"a": {"b": {"c": 3}}}, "a.b.c") == 3
    assert claim_at({"a": [1]}, "a.b") is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "/login"),
        ("/console/tenants?x=1", "/console/tenants?x=1"),
        ("https://evil.example.com/", "/login"),
        ("//evil.example.com/", "/login"),
        ("/\\evil.example.com", "/login"),
        ("/ok\r\nSet-Cookie: x", "/login"),
        ("relative", "/login"),
    ],
)
def test_return_paths_stay_on_this_site(given, expected):
    assert safe_return_to(given) == expected


# --- secrets at rest ------------------------------------------------------------------------


def test_secret_box_round_trip_and_key_rotation():
    old, new = Fernet.generate_key(), Fernet.generate_key()
    token = SecretBox([old]).encrypt("client secret")
    assert "client secret" not in token
    rotated_box = SecretBox([new, old])
    assert rotated_box.decrypt(token) == "client secret"
    assert SecretBox([new]).decrypt(rotated_box.rotate(token)) == "client secret"
    with pytest.raises(Unavailable) as raised:
        SecretBox([new]).decrypt(token)
    assert raised.value.code == "secret_undecryptable"


def test_embedded_setup_generates_one_private_key_file(tmp_path: Path):
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/cp.db", data_dir=str(tmp_path / "var"))
    token = secret_box(settings).encrypt("s")
    key_file = tmp_path / "var" / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The same key next time (a restart), not a new one.
    assert secret_box(settings).decrypt(token) == "s"
    key_file.write_text("not a key")
    with pytest.raises(ConfigError, match="LIVORA_SECRET_KEY"):
        secret_box(settings)


def test_postgres_needs_a_key_and_says_so():
    settings = Settings(database_url="postgresql://livora@db.example.com/livora")
    with pytest.raises(ConfigError) as raised:
        secret_box(settings)
    assert raised.value.variable == "LIVORA_SECRET_KEY" and "PostgreSQL" in raised.value.message
    # Through the service it is a 503 with a stable code, not a crash.
    runtime = Runtime.build(settings)
    try:
        service = SsoService(db=None, runtime=runtime, audit=None, identity=None)  # type: ignore[arg-type]
        with pytest.raises(Unavailable) as unavailable:
            _ = service.box
        assert unavailable.value.code == "secret_key_missing"
    finally:
        asyncio.run(runtime.close())


def test_a_malformed_key_is_a_config_error():
    with pytest.raises(ConfigError, match="32 bytes"):
        secret_box(Settings(database_url="sqlite+aiosqlite:///:memory:", secret_key="short"))
    two = f"{Fernet.generate_key().decode()}, {Fernet.generate_key().decode()}"
    assert secret_box(Settings(database_url="sqlite+aiosqlite:///:memory:", secret_key=two)).encrypt("x")
