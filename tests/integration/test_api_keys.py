"""API keys: the secret once, scopes, expiry, rotation with grace, revocation, last use."""

from __future__ import annotations

import datetime as dt
import time

from control_plane.db.models import ApiKey
from tests.support.api import problem, set_columns


def keys_url(tenant_id: str) -> str:
    return f"/api/v1/tenants/{tenant_id}/api-keys"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def create(client, world, **body):
    body.setdefault("name", "ingest server")
    body.setdefault("scopes", ["tenant:read"])
    response = client.post(keys_url(world.a.id), json=body, headers=world.a.members["admin"].headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_secret_shown_once_and_stored_hashed(client, world, aio):
    created = create(client, world, scopes=["tenant:read", "members:read"])
    secret, key = created["secret"], created["api_key"]
    assert secret.startswith(key["prefix"] + "_") and key["status"] == "active"
    assert key["scopes"] == ["members:read", "tenant:read"]
    listed = client.get(keys_url(world.a.id), headers=world.a.members["owner"].headers)
    assert secret not in listed.text and key["id"] in listed.text
    fetched = client.get(f"{keys_url(world.a.id)}/{key['id']}", headers=world.a.members["owner"].headers).json()
    assert "secret" not in fetched and fetched["prefix"] == key["prefix"]

    async def stored() -> ApiKey:
        async with world.runtime.services() as services:
            from kernel.tenancy import tenant_scope

            with tenant_scope(world.a.id):
                row = await services.db.get(ApiKey, key["id"])
                assert row is not None
                return row

    row = aio(stored())
    assert secret not in (row.secret_hash, row.prefix) and len(row.secret_hash) == 64


def test_key_acts_within_its_scopes_and_tenant(client, world):
    secret = create(client, world, scopes=["tenant:read"])["secret"]
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(secret)).status_code == 200
    problem(client.get(f"/api/v1/tenants/{world.a.id}/members", headers=bearer(secret)), 403, "permission_denied")
    problem(client.get(f"/api/v1/tenants/{world.b.id}", headers=bearer(secret)), 404, "tenant_not_found")
    problem(client.get("/api/v1/users", headers=bearer(secret)), 403, "permission_denied")
    tenants = client.get("/api/v1/tenants", headers=bearer(secret)).json()["items"]
    assert [t["id"] for t in tenants] == [world.a.id]


def test_scopes_that_would_let_a_key_manage_people_or_keys_are_refused(client, world):
    for scope in ("api_keys:write", "members:write", "invites:write", "tenant:write", "nonsense"):
        response = client.post(
            keys_url(world.a.id), json={"name": "x", "scopes": [scope]}, headers=world.a.members["owner"].headers
        )
        problem(response, 400, "validation_failed")
    problem(
        client.post(keys_url(world.a.id), json={"name": "x", "scopes": []}, headers=world.a.members["owner"].headers),
        400,
        "validation_failed",
    )


def test_revoked_key_is_refused(client, world):
    created = create(client, world)
    url = f"{keys_url(world.a.id)}/{created['api_key']['id']}"
    revoked = client.post(f"{url}/revoke", headers=world.a.members["admin"].headers).json()
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    problem(client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(created["secret"])), 401, "invalid_api_key")
    problem(client.post(f"{url}/rotate", headers=world.a.members["admin"].headers), 409, "api_key_revoked")


def test_expiry(client, world, aio):
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat()
    created = create(client, world, expires_at=future)
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(created["secret"])).status_code == 200
    set_columns(
        world, aio, ApiKey, created["api_key"]["id"], expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    problem(client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(created["secret"])), 401, "invalid_api_key")
    listed = client.get(keys_url(world.a.id), headers=world.a.members["admin"].headers).json()["items"]
    assert {k["id"]: k["status"] for k in listed}[created["api_key"]["id"]] == "expired"


def test_expiry_must_be_future_and_carry_an_offset(client, world):
    admin = world.a.members["admin"].headers
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    problem(
        client.post(
            keys_url(world.a.id), json={"name": "x", "scopes": ["tenant:read"], "expires_at": past}, headers=admin
        ),
        400,
        "expiry_in_past",
    )
    naive = "2099-01-01T00:00:00"
    problem(
        client.post(
            keys_url(world.a.id), json={"name": "x", "scopes": ["tenant:read"], "expires_at": naive}, headers=admin
        ),
        400,
        "validation_failed",
    )


def test_rotation_without_grace_ends_the_old_secret_at_once(client, world):
    created = create(client, world)
    url = f"{keys_url(world.a.id)}/{created['api_key']['id']}/rotate"
    rotated = client.post(url, headers=world.a.members["admin"].headers)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["api_key"]["id"] == created["api_key"]["id"] and new["secret"] != created["secret"]
    assert new["api_key"]["prefix"] != created["api_key"]["prefix"]
    problem(client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(created["secret"])), 401, "invalid_api_key")
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(new["secret"])).status_code == 200


def test_rotation_with_grace_keeps_the_old_secret_for_a_while(client, world, aio):
    created = create(client, world)
    key_id = created["api_key"]["id"]
    url = f"{keys_url(world.a.id)}/{key_id}/rotate"
    problem(
        client.post(url, json={"grace_period_seconds": 10**9}, headers=world.a.members["admin"].headers),
        400,
        "grace_period_too_long",
    )
    new = client.post(url, json={"grace_period_seconds": 3600}, headers=world.a.members["admin"].headers).json()
    assert new["api_key"]["previous_valid_until"]
    for secret in (created["secret"], new["secret"]):
        assert client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(secret)).status_code == 200
    set_columns(world, aio, ApiKey, key_id, previous_valid_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    problem(client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(created["secret"])), 401, "invalid_api_key")
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(new["secret"])).status_code == 200
    # Revocation ends a secret still in its grace period too.
    newer = client.post(url, json={"grace_period_seconds": 3600}, headers=world.a.members["admin"].headers).json()
    client.post(f"{keys_url(world.a.id)}/{key_id}/revoke", headers=world.a.members["admin"].headers)
    for secret in (new["secret"], newer["secret"]):
        problem(client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(secret)), 401, "invalid_api_key")


def test_last_used_at_is_recorded(client, world):
    created = create(client, world)
    key_url = f"{keys_url(world.a.id)}/{created['api_key']['id']}"
    assert client.get(key_url, headers=world.a.members["admin"].headers).json()["last_used_at"] is None
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(created["secret"])).status_code == 200
    used = client.get(key_url, headers=world.a.members["admin"].headers).json()["last_used_at"]
    assert used is not None and dt.datetime.fromisoformat(used) >= before
    time.sleep(0.01)
    client.get(f"/api/v1/tenants/{world.a.id}", headers=bearer(created["secret"]))
    # Within a minute the timestamp is not rewritten (no write per request).
    assert client.get(key_url, headers=world.a.members["admin"].headers).json()["last_used_at"] == used


def test_pagination_of_keys(client, world):
    for i in range(5):
        create(client, world, name=f"key {i}")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(keys_url(world.a.id), params=params, headers=world.a.members["admin"].headers).json()
        seen += [k["id"] for k in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 7  # 5 new + the world's 2
    problem(
        client.get(keys_url(world.a.id), params={"cursor": "not-a-cursor"}, headers=world.a.members["admin"].headers),
        400,
        "invalid_cursor",
    )
