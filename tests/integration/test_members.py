"""Memberships: roles per tenant, owner-only owner changes, the last owner stays."""

from __future__ import annotations

from tests.support.api import problem


def members_url(world, user_id: str = "") -> str:
    return f"/api/v1/tenants/{world.a.id}/members" + (f"/{user_id}" if user_id else "")


def test_list_and_get(client, world):
    page = client.get(members_url(world), headers=world.a.members["viewer"].headers).json()
    assert sorted(m["role"] for m in page["items"]) == sorted(
        ["owner", "admin", "analyst", "marketer", "sales", "viewer"]
    )
    owners = client.get(members_url(world), params={"role": "owner"}, headers=world.a.members["viewer"].headers).json()
    assert [m["email"] for m in owners["items"]] == [world.a.members["owner"].email]
    member = client.get(members_url(world, world.a.members["sales"].user_id), headers=world.a.members["viewer"].headers)
    assert member.json()["role"] == "sales"
    problem(
        client.get(members_url(world, "usr_missing"), headers=world.a.members["viewer"].headers),
        404,
        "member_not_found",
    )


def test_admin_changes_roles_but_not_the_owner_role(client, world):
    admin = world.a.members["admin"].headers
    target = world.a.members["viewer"].user_id
    assert (
        client.patch(members_url(world, target), json={"role": "marketer"}, headers=admin).json()["role"] == "marketer"
    )
    problem(client.patch(members_url(world, target), json={"role": "owner"}, headers=admin), 403, "owner_required")
    problem(
        client.patch(members_url(world, world.a.members["owner"].user_id), json={"role": "viewer"}, headers=admin),
        403,
        "owner_required",
    )
    problem(client.delete(members_url(world, world.a.members["owner"].user_id), headers=admin), 403, "owner_required")
    problem(client.patch(members_url(world, target), json={"role": "emperor"}, headers=admin), 400, "validation_failed")


def test_the_last_owner_cannot_be_removed_or_demoted(client, world):
    owner = world.a.members["owner"]
    problem(client.delete(members_url(world, owner.user_id), headers=owner.headers), 409, "last_owner")
    problem(
        client.patch(members_url(world, owner.user_id), json={"role": "admin"}, headers=owner.headers),
        409,
        "last_owner",
    )
    problem(
        client.delete(members_url(world, owner.user_id), headers=world.platform["ops_admin"].headers), 409, "last_owner"
    )
    # With a second owner, the first may step down.
    second = world.a.members["admin"].user_id
    assert (
        client.patch(members_url(world, second), json={"role": "owner"}, headers=owner.headers).json()["role"]
        == "owner"
    )
    assert (
        client.patch(members_url(world, owner.user_id), json={"role": "admin"}, headers=owner.headers).status_code
        == 200
    )
    problem(client.delete(members_url(world, second), headers=world.platform["ops_admin"].headers), 409, "last_owner")


def test_removed_member_loses_access(client, world):
    gone = world.a.members["analyst"]
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=gone.headers).status_code == 200
    assert client.delete(members_url(world, gone.user_id), headers=world.a.members["admin"].headers).status_code == 204
    problem(client.get(f"/api/v1/tenants/{world.a.id}", headers=gone.headers), 404, "tenant_not_found")
    problem(
        client.delete(members_url(world, gone.user_id), headers=world.a.members["admin"].headers),
        404,
        "member_not_found",
    )
