"""The admin console in headless Chromium: each role's journey, axe-core on every page, keyboard use, themes.

One browser and one live control plane for the module; each test opens its own context.
Screenshots land in the test's temporary folder (a test artifact, never committed).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from control_plane.app import create_app
from control_plane.runtime import Runtime
from control_plane.settings import Settings
from control_plane.sso.schemas import SsoConnectionCreate
from control_plane.tenants.schemas import TenantCreate
from tests.conftest import TEST_CELL_TOKEN_KEY, TEST_SECRET_KEY
from tests.support.api import outbox
from tests.support.browser import PinnedServer, launch_chromium, serious_accessibility_violations
from tests.support.databases import SqliteDatabases
from tests.support.oidc import FakeProvider
from tests.support.provisioning import embedded_spaces
from tests.support.world import PASSWORD, Actor, World

TABLET = {"width": 768, "height": 1024}
DESKTOP = {"width": 1280, "height": 800}
NEW_PASSWORD = "a fresh and long passphrase"
SSO_EMAIL = "pat@sso-co.example"


@dataclass
class Site:
    url: str
    settings: Settings
    ops_admin: Actor
    owner: Actor
    tenant_id: str
    tenant_b: str
    # A Pattern A tenant waiting for its client's role: its page shows the trust policy.
    tenant_pattern_a: str
    invite_token: str


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One browser for the module; every test opens its own context in it.

    CAUTION: playwright's sync driver keeps an event loop running on this thread while it lives, so
    ``asyncio.run`` fails until it stops: a module scope keeps it away from other modules' tests.
    """
    yield from launch_chromium()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sqlite_databases: SqliteDatabases) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("console")
    # Links the platform hands out (mail, the SSO start URL) name its public URL: make it this server's.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(
        public_url=f"http://127.0.0.1:{port}",
        database_url=sqlite_databases.fresh(root),
        data_dir=str(root / "var"),
        cookie_secure=False,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        secret_key=TEST_SECRET_KEY,
        cell_token_key=TEST_CELL_TOKEN_KEY,
        # The identity provider of the SSO journey runs on 127.0.0.1.
        sso_allow_local_issuers=True,
    )
    provider = FakeProvider("livora-console", "provider-secret").start()
    provider.account = {"sub": "pat-1", "email": SSO_EMAIL, "email_verified": True, "name": "Pat Sso"}

    async def seed() -> tuple[World, str, str]:
        runtime = Runtime.build(settings)
        try:
            world = await World.seed(runtime)
            async with runtime.services() as services:
                await services.identity.invite(world.a.id, "joiner@example.com", "admin", None)
                pattern_a = await services.tenants.create(
                    TenantCreate(name="Harbour Bank", deployment_pattern="A", provision=False), None
                )
                await services.sso.create(
                    world.b.id,
                    SsoConnectionCreate(
                        issuer=provider.issuer,
                        client_id="livora-console",
                        client_secret="provider-secret",
                        allowed_domains=[SSO_EMAIL.split("@")[1]],
                        default_role="analyst",
                    ),
                    None,
                    may_grant_owner=True,
                )
            return world, invite_code(settings, "joiner@example.com"), pattern_a.id
        finally:
            await runtime.close()

    # Its own thread: the session's playwright driver may already run an event loop on this one.
    with ThreadPoolExecutor(1) as pool:
        world, code, pattern_a = pool.submit(asyncio.run, seed()).result()
    runtime = Runtime.build(settings)
    runtime.provisioner.attach_builtin_cell(embedded_spaces(root / "builtin-cell"))
    live = PinnedServer(create_app(settings, runtime), port).start()
    yield Site(
        url=live.url,
        settings=settings,
        ops_admin=world.platform["ops_admin"],
        owner=world.a.members["owner"],
        tenant_id=world.a.id,
        tenant_b=world.b.id,
        tenant_pattern_a=pattern_a,
        invite_token=code,
    )
    live.stop()
    provider.stop()


def invite_code(settings: Settings, email: str) -> str:
    text = [m for m in outbox(settings) if m["to"] == email][-1]["text"]
    found = re.search(r"/console/invite\?token=(lvi_[A-Za-z0-9_-]+)", text)
    assert found, text
    return found.group(1)


class Tab:
    """A page in its own browser context, which records CSP violations and failed requests."""

    def __init__(self, browser: Any, site: Site, shots: Path, *, scheme: str = "light", viewport: Any = None) -> None:
        self.site = site
        self.shots = shots
        self.context = browser.new_context(color_scheme=scheme, viewport=viewport or DESKTOP, base_url=site.url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))

    def sign_in_as(self, actor: Actor) -> None:
        self.context.add_cookies([{"name": "livora_session", "value": actor.token, "url": self.site.url}])

    def check(self, name: str) -> None:
        """Screenshot the page, and fail on a serious or critical axe-core finding."""
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)
        found = serious_accessibility_violations(self.page)
        assert not found, f"{name}: {found}"

    def close(self) -> None:
        self.context.close()
        assert not [p for p in self.problems if "Content Security Policy" in p], self.problems


@pytest.fixture
def tab(chromium: Any, site: Site, tmp_path: Path) -> Iterator[Tab]:
    opened = Tab(chromium, site, tmp_path)
    yield opened
    opened.close()


def test_ops_admin_signs_in_by_keyboard_onboards_a_tenant_and_watches_it_provision(tab: Tab, site: Site) -> None:
    page = tab.page
    page.goto("/")
    assert page.url.endswith("/console/login?next=%2Fconsole")
    tab.check("01-sign-in")
    # Keyboard only: the email field has focus, Enter continues, then the password.
    page.keyboard.type(site.ops_admin.email or "")
    page.keyboard.press("Enter")
    page.wait_for_selector("#password")
    assert page.evaluate("document.activeElement.id") == "password"
    tab.check("02-password")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console")
    tab.check("03-overview")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New tenant").click()
    page.wait_for_url("**/console/ops/tenants/new")
    tab.check("04-wizard")
    page.get_by_label("Name", exact=True).fill("Nimbus Outdoor")
    page.get_by_label("Owner's email").fill("owner@nimbus.example")
    page.get_by_label("growth").check()
    page.get_by_text("What it creates").first.click()
    page.locator("input[name=template][value=ecommerce]").check()
    page.get_by_role("button", name="Create and provision").click()
    page.wait_for_url(re.compile(r".*/console/t/ten_[a-z0-9]+$"))
    # htmx is the vendored build, with eval off (the CSP would refuse it anyway).
    assert page.evaluate("[typeof htmx, htmx.config.allowEval, htmx.config.allowScriptTags]") == [
        "object",
        False,
        False,
    ]
    # htmx polls the run; once it ends the page reloads with the new state.
    page.wait_for_selector("#run-progress h2:has-text('succeeded')", timeout=30_000)
    page.wait_for_selector(".page-head .status-active")
    assert page.locator("#run-progress progress").get_attribute("value") == page.locator(
        "#run-progress progress"
    ).get_attribute("max")
    tab.check("05-provisioned")
    slug = page.locator("dd code").first.inner_text()

    # Suspend needs the slug typed: a wrong one is refused and nothing changes.
    page.get_by_label(re.compile("to confirm")).fill("not-the-slug")
    page.get_by_role("button", name="Suspend").click()
    page.wait_for_selector(".alert.error")
    assert "to confirm" in page.locator(".alert.error").inner_text()
    tab.check("06-confirm-refused")
    page.get_by_label(re.compile("to confirm")).fill(slug)
    page.get_by_role("button", name="Suspend").click()
    page.wait_for_selector(".page-head .status-suspended", timeout=30_000)
    tab.check("07-suspended")
    page.locator("#confirm-reactivate").fill(slug)
    page.get_by_role("button", name="Reactivate").click()
    page.wait_for_selector(".page-head .status-active", timeout=30_000)

    # The new tenant is in the list, found by search and by the plan filter.
    page.goto("/console/ops/tenants")
    page.get_by_label("Search").fill("nimbus")
    page.get_by_label("Plan").select_option("growth")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r".*q=nimbus.*"))
    rows = page.locator("tbody tr")
    assert rows.count() == 1 and "Nimbus Outdoor" in rows.first.inner_text()
    tab.check("08-tenants-filtered")
    page.get_by_label("Plan").select_option("enterprise")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_selector("text=No tenant matches these filters.")
    # The owner's invitation went out with the console's link.
    invite_code(site.settings, "owner@nimbus.example")


def test_single_sign_on_from_the_sign_in_page(tab: Tab, site: Site) -> None:
    page = tab.page
    page.goto("/console/t/" + site.tenant_b)
    page.get_by_label("Work email").fill(SSO_EMAIL)
    page.get_by_role("button", name="Continue").click()
    # The page follows the provider's link by itself; the provider answers at once and sends the browser back.
    page.wait_for_url(f"**/console/t/{site.tenant_b}", timeout=20_000)
    assert page.locator("h1").inner_text() == "Tenant B"
    assert SSO_EMAIL in page.locator(".who").get_attribute("title")
    tab.check("01-signed-in-by-sso")


def test_forgot_password_from_the_mail_outbox(tab: Tab, site: Site) -> None:
    page = tab.page
    email = "a-viewer@example.com"
    page.goto("/console/login")
    page.get_by_role("link", name="Forgot your password?").click()
    tab.check("01-forgot")
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Mail me a link").click()
    page.wait_for_selector("text=is on its way")
    text = [m for m in outbox(site.settings) if m["to"] == email][-1]["text"]
    link = re.search(r"http://\S+/console/reset\?token=\S+", text).group(0)  # type: ignore[union-attr]
    assert link.startswith(site.url + "/console/reset?token=")
    page.goto(link)
    tab.check("02-reset")
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set the new password").click()
    page.wait_for_selector("text=every session of your account was signed out")
    page.get_by_role("link", name="Sign in").click()
    page.get_by_label("Work email").fill(email)
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**/console/t/{site.tenant_id}")
    # The link worked once.
    page.goto(link)
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD + "!")
    page.get_by_label("New password again").fill(NEW_PASSWORD + "!")
    page.get_by_role("button", name="Set the new password").click()
    page.wait_for_selector("text=already used")


def test_the_invitation_link_sets_a_password_and_lands_in_the_workspace(tab: Tab, site: Site) -> None:
    page = tab.page
    page.goto(f"/console/invite?token={site.invite_token}")
    assert "joiner@example.com" in page.inner_text("main")
    tab.check("01-invite")
    page.get_by_label("Your name").fill("Jo Iner")
    page.get_by_label("Choose a password").fill(NEW_PASSWORD)
    page.get_by_label("Password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Join").click()
    page.wait_for_url(f"**/console/t/{site.tenant_id}")
    assert page.locator("h1").inner_text() == "Tenant A"
    tab.check("02-workspace")
    page.get_by_role("link", name="Account").click()
    assert "Jo Iner" in page.inner_text("main")
    page.get_by_role("button", name="Sign out").first.click()
    page.wait_for_url("**/console/login?signed_out=1")


SIGNED_IN_PAGES = {
    "overview": "/console",
    "tenants": "/console/ops/tenants",
    "wizard": "/console/ops/tenants/new",
    "cells": "/console/ops/cells",
    "tenant": "/console/t/{a}",
    "tenant-pattern-a": "/console/t/{pa}",
    "account": "/console/account",
    "members": "/console/t/{a}/members",
    "api-keys": "/console/t/{a}/api-keys",
    "sources": "/console/t/{a}/sources",
    "sso": "/console/t/{a}/sso",
    "audit": "/console/t/{a}/audit",
    "not-found": "/console/t/{b}x",
}
ANONYMOUS_PAGES = {
    "sign-in": "/console/login",
    "forgot": "/console/forgot",
    "reset": "/console/reset?token=lvr_unknown",
    "invite-unknown": "/console/invite?token=lvi_unknown",
}


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", ["desktop", "tablet"])
def test_every_page_passes_axe_in_both_themes_and_at_tablet_width(
    chromium: Any, site: Site, tmp_path: Path, scheme: str, width: str
) -> None:
    viewport = TABLET if width == "tablet" else DESKTOP
    for signed_in, pages in ((False, ANONYMOUS_PAGES), (True, SIGNED_IN_PAGES)):
        tab = Tab(chromium, site, tmp_path, scheme=scheme, viewport=viewport)
        if signed_in:
            tab.sign_in_as(site.ops_admin)
        for name, path in pages.items():
            tab.page.goto(path.format(a=site.tenant_id, b=site.tenant_b, pa=site.tenant_pattern_a))
            assert tab.page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], (
                f"{name} scrolls sideways at {viewport['width']} px"
            )
            tab.check(f"{name}-{scheme}-{width}")
        tab.close()


def test_keyboard_skip_link_and_visible_focus(tab: Tab, site: Site) -> None:
    tab.sign_in_as(site.ops_admin)
    page = tab.page
    page.goto("/console/account")
    page.keyboard.press("Tab")
    focused = page.evaluate("[document.activeElement.className, document.activeElement.getAttribute('href')]")
    assert focused == ["skip-link", "#main"]
    box = page.locator(".skip-link").bounding_box()
    assert box is not None and box["y"] >= 0, "the skip link becomes visible when focused"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # Onwards by Tab reaches the password form's fields, each with a visible focus ring.
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "current_password":
            break
    assert page.evaluate("document.activeElement.id") == "current_password"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"


def test_the_theme_follows_the_system_and_the_switch_is_remembered(chromium: Any, site: Site, tmp_path: Path) -> None:
    tab = Tab(chromium, site, tmp_path, scheme="dark")
    tab.sign_in_as(site.ops_admin)
    page = tab.page
    page.goto("/console")
    background = "getComputedStyle(document.body).backgroundColor"
    dark = page.evaluate(background)
    toggle = page.locator("#theme-toggle")
    assert toggle.inner_text() == "Theme: system"
    toggle.click()
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    light = page.evaluate(background)
    assert light != dark
    page.reload()
    # The server renders the choice, so there is no flash of the other theme.
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    assert page.evaluate(background) == light
    tab.check("light-chosen-on-dark-system")
    page.locator("#theme-toggle").click()
    page.locator("#theme-toggle").click()
    assert page.evaluate("document.documentElement.dataset.theme") is None
    assert page.evaluate(background) == dark
    tab.close()
