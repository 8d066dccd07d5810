"""The audit trail: who, tenant, action, target, time, source IP, outcome; read-only."""

from __future__ import annotations

import datetime as dt

from tests.support.api import problem


def entries(client, headers, url="/api/v1/audit", **params):
    response = client.get(url, params={"limit": 200, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_successful_change_is_audited_with_actor_ip_and_request_id(client, world):
    admin = world.a.members["admin"]
    response = client.post(
        f"/api/v1/tenants/{world.a.id}/api-keys",
        json={"name": "k", "scopes": ["tenant:read"]},
        headers={**admin.headers, "X-Request-ID": "req-audit-1"},
    )
    assert response.headers["x-request-id"] == "req-audit-1"
    key_id = response.json()["api_key"]["id"]
    [entry] = entries(
        client, admin.headers, f"/api/v1/tenants/{world.a.id}/audit", action="api_key.created", target_id=key_id
    )
    assert entry["actor_type"] == "user" and entry["actor_id"] == admin.user_id and entry["actor_label"] == admin.email
    assert entry["tenant_id"] == world.a.id and entry["target_type"] == "api_key"
    assert entry["outcome"] == "success" and entry["source_ip"] == "127.0.0.1"
    assert entry["request_id"] == "req-audit-1"
    assert dt.datetime.fromisoformat(entry["occurred_at"]) > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)


def test_denied_and_failed_mutations_are_audited(client, world):
    viewer = world.a.members["viewer"]
    problem(
        client.post(
            f"/api/v1/tenants/{world.a.id}/api-keys",
            json={"name": "k", "scopes": ["tenant:read"]},
            headers=viewer.headers,
        ),
        403,
        "permission_denied",
    )
    problem(
        client.post("/api/v1/auth/login", json={"email": "intruder@example.com", "password": "guessing games"}),
        401,
        "invalid_login",
    )
    owner = world.a.members["owner"]
    problem(
        client.delete(f"/api/v1/tenants/{world.a.id}/members/{owner.user_id}", headers=owner.headers), 409, "last_owner"
    )

    ops = world.platform["ops_admin"].headers
    [denied] = entries(client, ops, action="api_key.created", outcome="denied")
    assert (denied["actor_id"], denied["tenant_id"], denied["status_code"]) == (viewer.user_id, world.a.id, 403)
    [login] = entries(client, ops, action="session.created", outcome="denied")
    assert login["actor_type"] == "anonymous" and login["details"] == {"email": "intruder@example.com"}
    [conflict] = entries(client, ops, action="member.removed", outcome="failure")
    assert conflict["status_code"] == 409 and conflict["target_id"] == owner.user_id


def test_probes_of_a_foreign_tenant_stay_out_of_its_trail(client, world):
    """A stranger's attempts on tenant B are recorded for staff, not written into B's own trail."""
    intruder = world.a.members["owner"]
    problem(
        client.post(f"/api/v1/tenants/{world.b.id}/invites", json={"email": "x@y.test"}, headers=intruder.headers),
        404,
        "tenant_not_found",
    )
    problem(
        client.post(f"/api/v1/tenants/{world.b.id}/api-keys", json={"name": "k", "scopes": ["tenant:read"]}),
        401,
        "not_authenticated",
    )
    b_trail = entries(client, world.b.members["owner"].headers, f"/api/v1/tenants/{world.b.id}/audit")
    assert [e for e in b_trail if e["outcome"] != "success"] == []
    probes = entries(client, world.platform["ops_admin"].headers, outcome="denied")
    probes += entries(client, world.platform["ops_admin"].headers, outcome="failure")
    recorded = {(e["action"], e["actor_id"], e["tenant_id"], e["details"].get("tenant_id")) for e in probes}
    assert ("invite.created", intruder.user_id, None, world.b.id) in recorded
    assert ("api_key.created", None, None, world.b.id) in recorded


def test_tenant_admins_see_their_tenant_and_staff_see_all(client, world):
    client.post(
        f"/api/v1/tenants/{world.a.id}/invites", json={"email": "x@a.test"}, headers=world.a.members["admin"].headers
    )
    client.post(
        f"/api/v1/tenants/{world.b.id}/invites", json={"email": "y@b.test"}, headers=world.b.members["admin"].headers
    )
    client.post(
        "/api/v1/auth/login", json={"email": world.a.members["owner"].email, "password": "correct horse battery staple"}
    )
    a_entries = entries(client, world.a.members["admin"].headers, f"/api/v1/tenants/{world.a.id}/audit")
    assert a_entries and {e["tenant_id"] for e in a_entries} == {world.a.id}
    everything = entries(client, world.platform["ops_viewer"].headers)
    assert {world.a.id, world.b.id, None} <= {e["tenant_id"] for e in everything}
    only_b = entries(client, world.platform["ops_viewer"].headers, tenant_id=world.b.id)
    assert {e["tenant_id"] for e in only_b} == {world.b.id}
    problem(client.get("/api/v1/audit", headers=world.a.members["owner"].headers), 403, "permission_denied")


def test_time_filters_and_pagination(client, world):
    ops = world.platform["ops_admin"].headers
    for i in range(5):
        client.post(f"/api/v1/tenants/{world.a.id}/invites", json={"email": f"p{i}@a.test"}, headers=ops)
    all_invites = entries(client, ops, action="invite.created")
    assert len(all_invites) == 5
    times = [e["occurred_at"] for e in all_invites]
    assert times == sorted(times, reverse=True)
    seen, cursor = [], None
    while True:
        params = {"action": "invite.created", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/audit", params=params, headers=ops).json()
        seen += [e["id"] for e in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == [e["id"] for e in all_invites]
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert entries(client, ops, since=future) == []
    assert len(entries(client, ops, action="invite.created", until=future)) == 5


def test_entries_cannot_be_changed_through_the_api(client, world):
    ops = world.platform["ops_admin"].headers
    client.post(f"/api/v1/tenants/{world.a.id}/invites", json={"email": "z@a.test"}, headers=ops)
    entry = entries(client, ops)[0]
    for method in ("PUT", "PATCH", "DELETE"):
        response = client.request(method, f"/api/v1/audit/{entry['id']}", headers=ops)
        assert response.status_code in (404, 405), response.status_code
        response = client.request(method, "/api/v1/audit", headers=ops)
        assert response.status_code == 405
    assert entries(client, ops)[0] == entry
