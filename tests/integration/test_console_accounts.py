"""Accounts: forgotten passwords (single use, 30 minutes, every session ends), own sessions, invitation links."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from control_plane.db.models import User
from control_plane.http import SESSION_COOKIE
from control_plane.identity.models import PasswordReset
from control_plane.settings import Settings
from control_plane.sso.schemas import SsoConnectionCreate
from kernel.db import new_id, utcnow
from kernel.tenancy import dangerously_unscoped
from tests.support.api import outbox, problem, set_columns
from tests.support.server import LiveServer
from tests.support.world import PASSWORD, World

RESET_LINK = re.compile(r"(http://\S+/console/reset\?token=(lvr_[A-Za-z0-9_-]{20,}))")
INVITE_LINK = re.compile(r"(http://\S+/console/invite\?token=(lvi_[A-Za-z0-9_-]{20,}))")
CSRF_IN_PAGE = re.compile(r'name="_csrf" value="([0-9a-f]{64})"')
NEW_PASSWORD = "a brand new passphrase"


def mails_to(settings: Settings, email: str) -> list[dict[str, Any]]:
    return [m for m in outbox(settings) if m["to"] == email]


def reset_link(settings: Settings, email: str) -> tuple[str, str]:
    found = RESET_LINK.search(mails_to(settings, email)[-1]["text"])
    assert found, mails_to(settings, email)[-1]["text"]
    return found.group(1), found.group(2)


def test_forgot_password_mails_a_single_use_link_that_ends_every_session(
    client: httpx.Client, world: World, settings: Settings
) -> None:
    actor = world.a.members["analyst"]
    email = actor.email or ""
    assert client.get("/api/v1/auth/me", headers=actor.headers).status_code == 200
    # An unknown email gets the same answer and no mail.
    assert client.post("/api/v1/auth/password/forgot", json={"email": "nobody@example.com"}).status_code == 202
    assert not mails_to(settings, "nobody@example.com")
    assert client.post("/api/v1/auth/password/forgot", json={"email": email.upper()}).status_code == 202
    mail = mails_to(settings, email)[-1]
    assert mail["subject"] == "Reset your Livora password"
    link, token = reset_link(settings, email)
    assert link.startswith(settings.base_url + "/console/reset?token=")
    problem(
        client.post("/api/v1/auth/password/reset", json={"token": token, "new_password": "short"}),
        400,
        "password_too_short",
    )
    assert (
        client.post("/api/v1/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD}).status_code
        == 204
    )
    # Every session of the account ended; the old password is gone, the new one works.
    problem(client.get("/api/v1/auth/me", headers=actor.headers), 401, "invalid_session")
    problem(client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}), 401, "invalid_login")
    assert client.post("/api/v1/auth/login", json={"email": email, "password": NEW_PASSWORD}).status_code == 200
    # Single use.
    problem(
        client.post("/api/v1/auth/password/reset", json={"token": token, "new_password": PASSWORD + "!"}),
        409,
        "reset_already_used",
    )
    problem(
        client.post("/api/v1/auth/password/reset", json={"token": token[:-2] + "zz", "new_password": PASSWORD}),
        404,
        "reset_not_found",
    )


def test_a_reset_link_expires_after_thirty_minutes(
    client: httpx.Client, world: World, settings: Settings, aio: Callable[[Awaitable[Any]], Any]
) -> None:
    email = world.a.members["viewer"].email or ""
    before = utcnow()
    client.post("/api/v1/auth/password/forgot", json={"email": email})
    _, token = reset_link(settings, email)

    async def the_reset() -> PasswordReset:
        from sqlalchemy import select

        from control_plane.identity.secrets import token_hash

        async with world.runtime.services() as services:
            return (
                await services.db.scalars(select(PasswordReset).where(PasswordReset.token_hash == token_hash(token)))
            ).one()

    reset = aio(the_reset())
    lifetime = reset.expires_at - before
    assert dt.timedelta(minutes=29, seconds=50) < lifetime <= dt.timedelta(minutes=30, seconds=5)
    set_columns(world, aio, PasswordReset, reset.id, expires_at=utcnow() - dt.timedelta(seconds=1))
    problem(
        client.post("/api/v1/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD}),
        410,
        "reset_expired",
    )


def test_reset_mails_are_limited_per_email(client: httpx.Client, world: World, settings: Settings) -> None:
    email = world.b.members["viewer"].email or ""
    for _ in range(6):
        assert client.post("/api/v1/auth/password/forgot", json={"email": email}).status_code == 202
    assert len(mails_to(settings, email)) == 3


def test_forgot_password_in_the_console(server: LiveServer, world: World, settings: Settings) -> None:
    actor = world.b.members["admin"]
    email = actor.email or ""
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        page = browser.get("/console/forgot")
        csrf = CSRF_IN_PAGE.search(page.text).group(1)  # type: ignore[union-attr]
        sent = browser.post("/console/forgot", data={"_csrf": csrf, "email": email})
        assert sent.status_code == 200 and "is on its way" in sent.text
        link, token = reset_link(settings, email)
        form = browser.get(link.removeprefix(settings.base_url))
        assert form.status_code == 200 and f'value="{token}"' in form.text
        mismatch = browser.post(
            "/console/reset",
            data={"_csrf": csrf, "token": token, "new_password": NEW_PASSWORD, "confirm_password": "other"},
        )
        assert mismatch.status_code == 400 and "differ" in mismatch.text
        done = browser.post(
            "/console/reset",
            data={"_csrf": csrf, "token": token, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
        )
        assert done.status_code == 200 and "every session of your account was signed out" in done.text
        again = browser.post(
            "/console/reset",
            data={"_csrf": csrf, "token": token, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
        )
        assert again.status_code == 409 and "already used" in again.text
    with httpx.Client(base_url=server.url, timeout=30) as api:
        problem(api.get("/api/v1/auth/me", headers=actor.headers), 401, "invalid_session")


def test_list_and_revoke_own_sessions(client: httpx.Client, world: World) -> None:
    actor = world.a.members["owner"]
    other = client.post("/api/v1/auth/login", json={"email": actor.email, "password": PASSWORD}).json()["token"]
    sessions = client.get("/api/v1/auth/sessions", headers=actor.headers).json()
    assert len(sessions) == 2 and [s["current"] for s in sessions].count(True) == 1
    second = next(s for s in sessions if not s["current"])
    # Someone else's session is not yours to see or end.
    stranger = world.a.members["admin"]
    problem(client.delete(f"/api/v1/auth/sessions/{second['id']}", headers=stranger.headers), 404, "session_not_found")
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    assert client.delete(f"/api/v1/auth/sessions/{second['id']}", headers=actor.headers).status_code == 204
    problem(client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {other}"}), 401, "invalid_session")
    assert [s["id"] for s in client.get("/api/v1/auth/sessions", headers=actor.headers).json()] == [
        s["id"] for s in sessions if s["current"]
    ]


def test_the_console_account_page_changes_the_password_and_revokes_sessions(
    server: LiveServer, client: httpx.Client, world: World
) -> None:
    actor = world.a.members["marketer"]
    other = client.post("/api/v1/auth/login", json={"email": actor.email, "password": PASSWORD}).json()["token"]
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        browser.cookies.set(SESSION_COOKIE, actor.token)
        page = browser.get("/console/account")
        assert page.status_code == 200 and "this one" in page.text
        csrf = CSRF_IN_PAGE.search(page.text).group(1)  # type: ignore[union-attr]
        wrong = browser.post(
            "/console/account/password",
            data={
                "_csrf": csrf,
                "current_password": "wrong",
                "new_password": NEW_PASSWORD,
                "confirm_password": NEW_PASSWORD,
            },
        )
        assert wrong.status_code == 400 and "current password is incorrect" in wrong.text
        changed = browser.post(
            "/console/account/password",
            data={
                "_csrf": csrf,
                "current_password": PASSWORD,
                "new_password": NEW_PASSWORD,
                "confirm_password": NEW_PASSWORD,
            },
        )
        assert changed.status_code == 200 and "other sessions ended" in changed.text
        problem(client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {other}"}), 401, "invalid_session")
        mine = client.get("/api/v1/auth/sessions", headers=actor.headers).json()
        assert len(mine) == 1
        out = browser.post(f"/console/account/sessions/{mine[0]['id']}/revoke", data={"_csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        assert browser.get("/console/account").status_code == 303


def test_the_invitation_mail_links_to_an_accept_page_that_signs_you_in(
    client: httpx.Client, server: LiveServer, world: World, settings: Settings
) -> None:
    owner = world.a.members["owner"]
    email = "new.colleague@example.com"
    assert client.post(
        f"/api/v1/tenants/{world.a.id}/invites", json={"email": email, "role": "analyst"}, headers=owner.headers
    ).is_success
    text = mails_to(settings, email)[-1]["text"]
    assert "curl" not in text
    link, token = INVITE_LINK.search(text).groups()  # type: ignore[union-attr]
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        page = browser.get(link.removeprefix(settings.base_url))
        assert page.status_code == 200 and email in page.text and "Tenant A" in page.text and "analyst" in page.text
        csrf = CSRF_IN_PAGE.search(page.text).group(1)  # type: ignore[union-attr]
        short = browser.post(
            "/console/invite", data={"_csrf": csrf, "token": token, "password": "short", "confirm_password": "short"}
        )
        assert short.status_code == 400 and "at least 12 characters" in short.text
        joined = browser.post(
            "/console/invite",
            data={
                "_csrf": csrf,
                "token": token,
                "name": "New Colleague",
                "password": NEW_PASSWORD,
                "confirm_password": NEW_PASSWORD,
            },
        )
        assert joined.status_code == 303 and joined.headers["location"] == f"/console/t/{world.a.id}"
        assert browser.get(joined.headers["location"]).status_code == 200
        used = browser.get(f"/console/invite?token={token}")
        assert "already used" in used.text
    members = client.get(f"/api/v1/tenants/{world.a.id}/members", headers=owner.headers, params={"limit": 100}).json()
    assert any(m["email"] == email and m["role"] == "analyst" for m in members["items"])


def test_a_person_signed_in_by_sso_accepts_an_invitation_without_a_password(
    client: httpx.Client, server: LiveServer, world: World, settings: Settings, aio: Callable[[Awaitable[Any]], Any]
) -> None:
    email = "sso.person@corp-b.example"

    async def prepare() -> str:
        async with world.runtime.services() as services:
            await services.sso.create(
                world.b.id,
                SsoConnectionCreate(
                    issuer="https://idp.example.com",
                    client_id="livora",
                    client_secret="s3cret-value",
                    allowed_domains=["corp-b.example"],
                ),
                None,
                may_grant_owner=True,
            )
            # An account single sign-on created: no password, and a session of its own.
            user = User(id=new_id("usr"), email=email, name="Sso Person")
            services.db.add(user)
            await services.db.flush()
            _, token = services.identity.stage_session(user, source_ip=None, user_agent=None)
            with dangerously_unscoped():
                await services.db.commit()
            return token

    session = aio(prepare())
    owner = world.b.members["owner"]
    assert client.post(
        f"/api/v1/tenants/{world.b.id}/invites", json={"email": email, "role": "analyst"}, headers=owner.headers
    ).is_success
    _, token = INVITE_LINK.search(mails_to(settings, email)[-1]["text"]).groups()  # type: ignore[union-attr]
    with httpx.Client(base_url=server.url, timeout=30) as visitor:
        page = visitor.get(f"/console/invite?token={token}")
        sso = re.search(r'href="([^"]*/api/v1/sso/start\?[^"]+)"', page.text)
        assert sso and "return_to=%2Fconsole%2Finvite%3Ftoken%3D" in sso.group(1).replace("&amp;", "&")
    with httpx.Client(base_url=server.url, timeout=30) as stranger:
        stranger.cookies.set(SESSION_COOKIE, world.a.members["viewer"].token)
        wrong = stranger.get(f"/console/invite?token={token}")
        assert "but this invitation is for sso.person@corp-b.example" in wrong.text
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        browser.cookies.set(SESSION_COOKIE, session)
        page = browser.get(f"/console/invite?token={token}")
        assert f"You are signed in as {email}" in page.text and 'name="password"' not in page.text
        csrf = CSRF_IN_PAGE.search(page.text).group(1)  # type: ignore[union-attr]
        accepted = browser.post("/console/invite", data={"_csrf": csrf, "token": token})
        assert accepted.status_code == 303 and accepted.headers["location"] == f"/console/t/{world.b.id}"
        assert browser.get(accepted.headers["location"]).status_code == 200
    members = client.get(f"/api/v1/tenants/{world.b.id}/members", headers=owner.headers, params={"limit": 100}).json()
    assert any(m["email"] == email and m["role"] == "analyst" for m in members["items"])
