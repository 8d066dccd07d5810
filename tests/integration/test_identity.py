"""Sign-in, sessions, passwords, invitations and the negative cases of authentication."""

from __future__ import annotations

import datetime as dt
import socket
import time

import httpx
import pytest
from sqlalchemy import select

from control_plane.db.models import Invite, Tenant, UserSession
from tests.support.api import invite_token_for, outbox, problem, set_columns
from tests.support.world import PASSWORD

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"


def login(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post(LOGIN, json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_login_gives_bearer_token_and_secure_cookie(client, world):
    email = world.a.members["analyst"].email
    response = login(client, email.upper())  # emails are case-insensitive
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token"].startswith("lvs_") and body["token_type"] == "bearer"
    assert body["user"]["email"] == email
    cookie = response.headers["set-cookie"]
    assert f"livora_session={body['token']}" in cookie
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    me = client.get(ME, headers=bearer(body["token"])).json()
    assert me["user"]["id"] == world.a.members["analyst"].user_id
    assert [(m["tenant_id"], m["role"]) for m in me["memberships"]] == [(world.a.id, "analyst")]
    # The cookie alone also authenticates (browsers).
    with httpx.Client(base_url=str(client.base_url), cookies={"livora_session": body["token"]}) as browser:
        assert browser.get(ME).json()["user"]["email"] == email


def test_failed_logins_are_indistinguishable(client, world):
    wrong_password = problem(login(client, world.a.members["owner"].email, "not the password!"), 401, "invalid_login")
    unknown_email = problem(login(client, "nobody@example.com", "not the password!"), 401, "invalid_login")
    for body in (wrong_password, unknown_email):
        body.pop("request_id")
    assert wrong_password == unknown_email


def test_disabled_user_cannot_sign_in_and_loses_sessions(client, world):
    target = world.a.members["viewer"]
    assert client.get(ME, headers=target.headers).status_code == 200
    response = client.patch(
        f"/api/v1/users/{target.user_id}", json={"is_active": False}, headers=world.platform["ops_admin"].headers
    )
    assert response.status_code == 200 and response.json()["is_active"] is False
    problem(client.get(ME, headers=target.headers), 401, "invalid_session")
    problem(login(client, target.email), 401, "invalid_login")


def test_repeated_failures_lock_the_email_for_a_growing_time(client, world, server):
    email = world.a.members["owner"].email
    for _ in range(5):
        problem(login(client, email, "wrong password!!"), 401, "invalid_login")
    locked = problem(login(client, email), 429, "login_locked")
    assert "Retry-After" in login(client, email).headers
    assert 1 <= int(login(client, email).headers["Retry-After"]) <= 60
    assert locked["detail"]
    # Another email is not affected, and an unknown email locks the same way (no enumeration).
    assert login(client, world.a.members["admin"].email).status_code == 200
    for _ in range(5):
        login(client, "ghost@example.com", "wrong password!!")
    problem(login(client, "ghost@example.com"), 429, "login_locked")


@pytest.mark.parametrize("kv_driver", ["memory", "redis"])
def test_lockout_doubles_and_clears_on_success(kv_driver, settings, request, unique_prefix):
    import msgspec

    from control_plane.app import create_app
    from control_plane.runtime import Runtime
    from tests.support.server import LiveServer
    from tests.support.world import World

    overrides = {
        "login_max_failures": 2,
        "login_lockout_seconds": 1,
        "kv_driver": kv_driver,
        "kv_prefix": unique_prefix,
    }
    if kv_driver == "redis":
        overrides["redis_url"] = request.getfixturevalue("redis_url")
    tuned = msgspec.structs.replace(settings, **overrides)
    aio = request.getfixturevalue("aio")
    runtime = Runtime.build(tuned)
    world = aio(World.seed(runtime))
    live = LiveServer(create_app(tuned)).start()
    try:
        with httpx.Client(base_url=live.url) as client:
            email = world.a.members["owner"].email
            login(client, email, "wrong password!!")
            login(client, email, "wrong password!!")
            first = int(login(client, email).headers["Retry-After"])
            assert first == 1
            time.sleep(1.1)
            problem(login(client, email, "wrong password!!"), 401, "invalid_login")
            second = login(client, email)
            assert second.status_code == 429 and int(second.headers["Retry-After"]) == 2
            time.sleep(2.1)
            assert login(client, email).status_code == 200
            # Success cleared the count: one new failure does not lock.
            login(client, email, "wrong password!!")
            assert login(client, email).status_code == 200
    finally:
        live.stop()
        aio(runtime.close())


def test_logout_ends_the_session_and_clears_the_cookie(client, world):
    token = login(client, world.b.members["admin"].email).json()["token"]
    response = client.post("/api/v1/auth/logout", headers=bearer(token))
    assert response.status_code == 204
    assert 'livora_session=""' in response.headers["set-cookie"] or "Max-Age=0" in response.headers["set-cookie"]
    problem(client.get(ME, headers=bearer(token)), 401, "invalid_session")


@pytest.mark.parametrize(
    "token",
    ["lvs_tampered", "garbage", "lvk_00000000_forged", "Bearer"],
)
def test_tampered_or_unknown_tokens_are_refused(client, world, token):
    response = client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["code"] in {"invalid_session", "invalid_api_key", "not_authenticated"}


def test_tampered_real_token_is_refused(client, world):
    token = world.a.members["owner"].token
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    problem(client.get(ME, headers=bearer(forged)), 401, "invalid_session")
    problem(client.get(ME), 401, "not_authenticated")


def test_expired_session_is_refused(client, world, aio):
    actor = world.a.members["owner"]

    async def session_id() -> str:
        async with world.runtime.services() as services:
            return (await services.db.scalars(select(UserSession.id).where(UserSession.user_id == actor.user_id))).one()

    set_columns(
        world, aio, UserSession, aio(session_id()), expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    problem(client.get(ME, headers=actor.headers), 401, "invalid_session")


def test_change_password(client, world):
    email = world.a.members["marketer"].email
    current = login(client, email).json()["token"]
    other = login(client, email).json()["token"]
    change = "/api/v1/auth/password"
    problem(
        client.post(
            change,
            json={"current_password": "wrong one!!!", "new_password": "a brand new secret"},
            headers=bearer(current),
        ),
        400,
        "invalid_current_password",
    )
    problem(
        client.post(change, json={"current_password": PASSWORD, "new_password": "short"}, headers=bearer(current)),
        400,
        "password_too_short",
    )
    assert (
        client.post(
            change, json={"current_password": PASSWORD, "new_password": "a brand new secret"}, headers=bearer(current)
        ).status_code
        == 204
    )
    assert client.get(ME, headers=bearer(current)).status_code == 200
    problem(client.get(ME, headers=bearer(other)), 401, "invalid_session")
    problem(login(client, email), 401, "invalid_login")
    assert login(client, email, "a brand new secret").status_code == 200


def test_invite_accept_and_sign_in(client, world, settings):
    admin = world.a.members["admin"]
    response = client.post(
        f"/api/v1/tenants/{world.a.id}/invites",
        json={"email": "New.Person@Example.com", "role": "analyst"},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    invite = response.json()
    assert invite["status"] == "pending" and invite["email"] == "new.person@example.com"
    [mail] = [m for m in outbox(settings) if m["to"] == "new.person@example.com"]
    assert "Tenant A" in mail["subject"]
    token = invite_token_for(settings, "new.person@example.com")

    problem(client.post("/api/v1/invites/accept", json={"token": token}), 400, "password_required")
    problem(
        client.post("/api/v1/invites/accept", json={"token": token, "password": "short"}), 400, "password_too_short"
    )
    accepted = client.post(
        "/api/v1/invites/accept", json={"token": token, "password": "twelve chars ok", "name": "New Person"}
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["role"] == "analyst" and accepted.json()["tenant_id"] == world.a.id
    problem(
        client.post("/api/v1/invites/accept", json={"token": token, "password": "twelve chars ok"}),
        409,
        "invite_already_used",
    )

    session = login(client, "new.person@example.com", "twelve chars ok").json()
    me = client.get(ME, headers=bearer(session["token"])).json()
    assert me["user"]["name"] == "New Person"
    assert [(m["tenant_id"], m["role"]) for m in me["memberships"]] == [(world.a.id, "analyst")]
    listed = client.get(f"/api/v1/tenants/{world.a.id}/invites", headers=admin.headers).json()["items"]
    assert [i["status"] for i in listed if i["id"] == invite["id"]] == ["accepted"]


def test_existing_user_accepts_invite_to_a_second_tenant(client, world, settings):
    person = world.a.members["sales"]
    owner_b = world.b.members["owner"]
    assert (
        client.post(
            f"/api/v1/tenants/{world.b.id}/invites",
            json={"email": person.email, "role": "admin"},
            headers=owner_b.headers,
        ).status_code
        == 201
    )
    token = invite_token_for(settings, person.email)
    assert client.post("/api/v1/invites/accept", json={"token": token}).status_code == 200
    roles = {m["tenant_id"]: m["role"] for m in client.get(ME, headers=person.headers).json()["memberships"]}
    assert roles == {world.a.id: "sales", world.b.id: "admin"}
    # Different roles in different tenants: admin in B (may list keys), sales in A (may not).
    assert client.get(f"/api/v1/tenants/{world.b.id}/api-keys", headers=person.headers).status_code == 200
    problem(client.get(f"/api/v1/tenants/{world.a.id}/api-keys", headers=person.headers), 403, "permission_denied")
    # Inviting an existing member is refused.
    problem(
        client.post(f"/api/v1/tenants/{world.b.id}/invites", json={"email": person.email}, headers=owner_b.headers),
        409,
        "already_member",
    )


def test_expired_revoked_and_unknown_invites(client, world, settings, aio):
    admin = world.a.members["admin"]
    url = f"/api/v1/tenants/{world.a.id}/invites"
    first = client.post(url, json={"email": "late@example.com"}, headers=admin.headers).json()
    token = invite_token_for(settings, "late@example.com")
    set_columns(world, aio, Invite, first["id"], expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    problem(
        client.post("/api/v1/invites/accept", json={"token": token, "password": "twelve chars ok"}),
        410,
        "invite_expired",
    )
    assert client.get(url, headers=admin.headers).json()["items"][0]["status"] == "expired"

    # A re-invite replaces the pending one: the old code stops working.
    client.post(url, json={"email": "twice@example.com"}, headers=admin.headers)
    old = invite_token_for(settings, "twice@example.com")
    client.post(url, json={"email": "twice@example.com"}, headers=admin.headers)
    new = invite_token_for(settings, "twice@example.com")
    assert old != new
    problem(
        client.post("/api/v1/invites/accept", json={"token": old, "password": "twelve chars ok"}),
        404,
        "invite_not_found",
    )

    withdrawn = client.post(url, json={"email": "gone@example.com"}, headers=admin.headers).json()
    token = invite_token_for(settings, "gone@example.com")
    assert client.delete(f"{url}/{withdrawn['id']}", headers=admin.headers).json()["status"] == "revoked"
    problem(
        client.post("/api/v1/invites/accept", json={"token": token, "password": "twelve chars ok"}),
        404,
        "invite_not_found",
    )
    problem(
        client.post("/api/v1/invites/accept", json={"token": new[:-3] + "xyz", "password": "twelve chars ok"}),
        404,
        "invite_not_found",
    )
    assert client.post("/api/v1/invites/accept", json={"token": new, "password": "twelve chars ok"}).status_code == 200


def test_platform_invite_grants_platform_role(client, world, settings):
    ops = world.platform["ops_admin"]
    response = client.post(
        "/api/v1/platform/invites", json={"email": "analyst@livora.test", "role": "ops_viewer"}, headers=ops.headers
    )
    assert response.status_code == 201 and response.json()["tenant_id"] is None
    token = invite_token_for(settings, "analyst@livora.test")
    assert (
        client.post("/api/v1/invites/accept", json={"token": token, "password": "twelve chars ok"}).status_code == 200
    )
    session = login(client, "analyst@livora.test", "twelve chars ok").json()
    assert session["user"]["platform_role"] == "ops_viewer"
    assert client.get("/api/v1/users", headers=bearer(session["token"])).status_code == 200
    problem(
        client.post("/api/v1/tenants", json={"name": "x"}, headers=bearer(session["token"])), 403, "permission_denied"
    )


def test_suspended_tenant_refuses_its_users_and_keys_but_not_staff(client, world):
    ops = world.platform["ops_admin"]
    assert (
        client.post(f"/api/v1/tenants/{world.a.id}/suspend", json={"reason": "unpaid"}, headers=ops.headers).json()[
            "status"
        ]
        == "suspended"
    )
    for actor in [*world.a.members.values(), *world.a.keys.values()]:
        problem(client.get(f"/api/v1/tenants/{world.a.id}", headers=actor.headers), 403, "tenant_suspended")
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=world.platform["ops_viewer"].headers).status_code == 200
    # Tenant B is untouched.
    assert client.get(f"/api/v1/tenants/{world.b.id}", headers=world.b.members["viewer"].headers).status_code == 200
    assert client.post(f"/api/v1/tenants/{world.a.id}/reactivate", headers=ops.headers).json()["status"] == "active"
    assert (
        client.get(f"/api/v1/tenants/{world.a.id}", headers=world.a.keys["key_read_tenant"].headers).status_code == 200
    )


def test_deleted_tenant_is_gone_for_its_users(client, world, aio):
    ops = world.platform["ops_admin"]
    client.post(f"/api/v1/tenants/{world.a.id}/suspend", headers=ops.headers)
    assert client.delete(f"/api/v1/tenants/{world.a.id}", headers=ops.headers).json()["status"] == "deleted"
    problem(
        client.get(f"/api/v1/tenants/{world.a.id}", headers=world.a.members["owner"].headers), 404, "tenant_not_found"
    )
    # Its API keys stop working everywhere.
    for url in (f"/api/v1/tenants/{world.a.id}", ME, "/api/v1/tenants"):
        problem(client.get(url, headers=world.a.keys["key_all"].headers), 401, "invalid_api_key")
    me = client.get(ME, headers=world.a.members["owner"].headers).json()
    assert me["memberships"] == []
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=ops.headers).json()["status"] == "deleted"


def test_me_for_an_api_key(client, world):
    key = world.a.keys["key_read_tenant"]
    me = client.get(ME, headers=key.headers).json()
    assert me["principal_type"] == "api_key" and me["user"] is None
    assert me["tenant_id"] == world.a.id and me["scopes"] == ["tenant:read"]
    problem(client.post("/api/v1/auth/logout", headers=key.headers), 403, "not_a_session")


def test_invites_go_through_a_real_smtp_server(settings, aio, tmp_path):
    """The SMTP driver end to end: an invitation reaches a real SMTP server."""
    import msgspec
    from aiosmtpd.controller import Controller

    from control_plane.app import create_app
    from control_plane.runtime import Runtime
    from tests.support.server import LiveServer
    from tests.support.world import World

    received: list[tuple[str, bytes]] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.rcpt_tos[0], envelope.content))
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    smtp = Controller(Handler(), hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        tuned = msgspec.structs.replace(settings, mail_driver="smtp", smtp_host="127.0.0.1", smtp_port=port)
        runtime = Runtime.build(tuned)
        world = aio(World.seed(runtime))
        live = LiveServer(create_app(tuned)).start()
        try:
            with httpx.Client(base_url=live.url) as client:
                response = client.post(
                    f"/api/v1/tenants/{world.a.id}/invites",
                    json={"email": "smtp@example.com", "role": "viewer"},
                    headers=world.a.members["owner"].headers,
                )
                assert response.status_code == 201, response.text
        finally:
            live.stop()
            aio(runtime.close())
    finally:
        smtp.stop()
    assert [to for to, _ in received] == ["smtp@example.com"]
    assert b"lvi_" in received[0][1] and b"Tenant A" in received[0][1]


def test_tenant_rows_unchanged_by_failed_login(client, world, aio):
    """A failed sign-in writes nothing but its audit entry."""
    login(client, world.a.members["owner"].email, "wrong password!!")

    async def tenants() -> int:
        async with world.runtime.services() as services:
            return len((await services.db.scalars(select(Tenant.id))).all())

    assert aio(tenants()) == 2


def test_health_and_readiness(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ok"}


def test_not_ready_while_the_database_is_down(tmp_path):
    """A PostgreSQL URL nobody listens on: /ready answers 503 with Retry-After, /health stays up."""
    from control_plane.app import create_app
    from control_plane.settings import Settings
    from tests.support.server import LiveServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(database_url=f"postgresql://nobody@127.0.0.1:{port}/none", data_dir=str(tmp_path))
    live = LiveServer(create_app(settings)).start()
    try:
        with httpx.Client(base_url=live.url) as client:
            assert client.get("/health").status_code == 200
            response = client.get("/ready")
            problem(response, 503, "database_unavailable")
            assert response.headers["retry-after"]
    finally:
        live.stop()
