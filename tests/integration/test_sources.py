"""Sources and write keys: shown once, stored hashed, rotated with grace, revoked, audited."""

from __future__ import annotations

from control_plane.db.models import Source
from control_plane.identity.secrets import token_hash
from kernel.tenancy import tenant_scope
from tests.support.api import problem


def url(world, source_id: str = "") -> str:
    return f"/api/v1/tenants/{world.a.id}/sources" + (f"/{source_id}" if source_id else "")


def stored(world, aio, source_id: str) -> Source:
    async def work() -> Source:
        async with world.runtime.services() as services:
            with tenant_scope(world.a.id):
                row = await services.db.get(Source, source_id)
                assert row is not None
                return row

    return aio(work())


def test_create_shows_the_write_key_once_and_stores_its_hash(client, world, aio):
    admin = world.a.members["admin"].headers
    body = {
        "name": "Storefront",
        "kind": "web",
        "allowed_origins": ["https://shop.example.com", "http://localhost:3000"],
    }
    response = client.post(url(world), json=body, headers=admin)
    assert response.status_code == 201, response.text
    created = response.json()
    key, source = created["write_key"], created["source"]
    assert key.startswith(source["write_key_prefix"]) and len(key) > 30
    assert source["allowed_origins"] == ["http://localhost:3000", "https://shop.example.com"]
    assert source["status"] == "active" and source["kind"] == "web"
    row = stored(world, aio, source["id"])
    assert row.write_key_hash == token_hash(key) and key not in (row.write_key_prefix, row.write_key_hash)
    listed = client.get(url(world), headers=world.a.members["viewer"].headers)
    assert key not in listed.text and source["id"] in listed.text
    assert client.get(url(world, source["id"]), headers=world.a.members["viewer"].headers).json() == source


def test_bad_sources_are_refused(client, world):
    admin = world.a.members["admin"].headers
    for body in (
        {"name": "x", "kind": "fax"},
        {"name": "", "kind": "web"},
        {"name": "x", "kind": "web", "allowed_origins": ["https://shop.example.com/path"]},
        {"name": "x", "kind": "web", "allowed_origins": ["*"]},
        {"name": "x", "kind": "web", "write_key": "mine"},
    ):
        problem(client.post(url(world), json=body, headers=admin), 400, "validation_failed")
    problem(
        client.post(
            url(world), json={"name": "x", "kind": "server", "allowed_origins": ["https://a.example"]}, headers=admin
        ),
        400,
        "origins_for_web_only",
    )


def test_update_origins_and_name(client, world):
    admin = world.a.members["admin"].headers
    updated = client.patch(
        url(world, world.a.source_id),
        json={"name": "Shop", "allowed_origins": ["https://new.example.com"]},
        headers=admin,
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["name"], updated.json()["allowed_origins"]) == ("Shop", ["https://new.example.com"])
    problem(client.patch(url(world, "src_missing"), json={"name": "x"}, headers=admin), 404, "source_not_found")


def test_rotation_and_revocation(client, world, aio):
    admin = world.a.members["admin"].headers
    old_key = world.a.write_key
    rotated = client.post(f"{url(world, world.a.source_id)}/rotate", json={"grace_period_seconds": 600}, headers=admin)
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["write_key"]
    assert new_key != old_key and rotated.json()["source"]["previous_valid_until"]
    row = stored(world, aio, world.a.source_id)
    assert (row.write_key_hash, row.previous_write_key_hash) == (token_hash(new_key), token_hash(old_key))

    immediate = client.post(f"{url(world, world.a.source_id)}/rotate", headers=admin).json()
    row = stored(world, aio, world.a.source_id)
    assert row.write_key_hash == token_hash(immediate["write_key"]) and row.previous_write_key_hash is None

    problem(
        client.post(f"{url(world, world.a.source_id)}/rotate", json={"grace_period_seconds": 10**9}, headers=admin),
        400,
        "grace_period_too_long",
    )
    revoked = client.post(f"{url(world, world.a.source_id)}/revoke", headers=admin).json()
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    problem(client.post(f"{url(world, world.a.source_id)}/rotate", headers=admin), 409, "source_revoked")
    actions = [
        e["action"]
        for e in client.get(
            f"/api/v1/tenants/{world.a.id}/audit",
            params={"target_id": world.a.source_id, "outcome": "success"},
            headers=admin,
        ).json()["items"]
    ]
    assert actions[:4] == ["source.revoked", "source.key_rotated", "source.key_rotated", "source.created"]
