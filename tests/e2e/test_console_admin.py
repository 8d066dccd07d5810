"""The workspace admin pages in headless Chromium: a new owner's journey from the invitation mail to a
source and an API key, copy buttons, and axe-core on each page's states in both themes.

It reuses the console browser module's site (its own instance: fixtures are per module) and tabs.
Screenshots land in the test's temporary folder (a test artifact, never committed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_console_browser import NEW_PASSWORD, Site, Tab, chromium, invite_code, site
from tests.support.api import outbox

__all__ = ["chromium", "site"]


def invite_owner(site: Site, email: str) -> str:
    """The tenant's owner invites another owner through the API; the code comes from the mail outbox."""
    with httpx.Client(base_url=site.url, timeout=30, headers=site.owner.headers) as api:
        sent = api.post(f"/api/v1/tenants/{site.tenant_id}/invites", json={"email": email, "role": "owner"})
        assert sent.status_code == 201, sent.text
    return invite_code(site.settings, email)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_new_owner_joins_by_the_mail_and_creates_a_source_and_an_api_key(
    chromium: Any, site: Site, tmp_path: Path, scheme: str
) -> None:
    email = f"second-owner-{scheme}@example.com"
    code = invite_owner(site, email)
    tab = Tab(chromium, site, tmp_path, scheme=scheme)
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.url)
    page = tab.page
    mail = [m for m in outbox(site.settings) if m["to"] == email]
    link = re.search(r"http://\S+/console/invite\?token=\S+", mail[-1]["text"]).group(0)  # type: ignore[union-attr]
    page.goto(link.removeprefix(site.settings.base_url))
    assert code in page.url and email in page.inner_text("main")
    page.get_by_label("Your name").fill("Sam Second")
    page.get_by_label("Choose a password").fill(NEW_PASSWORD)
    page.get_by_label("Password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Join").click()
    page.wait_for_url(f"**/console/t/{site.tenant_id}")
    menu = page.get_by_role("navigation", name="Main")
    for label in ("Members", "API keys", "Sources", "Single sign-on", "Audit log"):
        assert menu.get_by_role("link", name=label).is_visible(), label
    tab.check(f"01-workspace-{scheme}")

    # A source: its page gives the write key once, in snippets that name the cell.
    menu.get_by_role("link", name="Sources").click()
    page.wait_for_url("**/sources")
    tab.check(f"02-sources-{scheme}")
    page.get_by_label("Name").fill(f"Web shop {scheme}")
    page.get_by_label("web", exact=True).check()
    page.get_by_label("Allowed origins (web sources)").fill("https://shop.example.com")
    page.get_by_role("button", name="Create source").click()
    page.wait_for_selector("#write-key")
    write_key = page.locator("#write-key").inner_text()
    assert write_key.startswith("lvw_")
    snippet = page.locator("#snippet-sdk-js").inner_text()
    assert f'livora.load("{write_key}", {{ host: "{site.settings.builtin_cell_ingest_url}" }});' in snippet
    page.get_by_role("button", name="Copy", exact=True).click()
    page.wait_for_selector("text=Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == write_key
    tab.check(f"03-source-created-{scheme}")
    page.get_by_role("link", name="All sources").click()
    row = page.locator("tbody tr", has_text=f"Web shop {scheme}")
    assert row.count() == 1 and write_key[:12] in row.inner_text() and write_key not in page.content()

    # An API key, by keyboard: name, one scope, then the button.
    menu.get_by_role("link", name="API keys").click()
    page.wait_for_url("**/api-keys")
    tab.check(f"04-api-keys-{scheme}")
    page.get_by_label("Name").focus()
    page.keyboard.type(f"exporter {scheme}")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.value") == "tenant:read"
    page.keyboard.press("Space")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Create key":
            break
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    page.wait_for_selector("#new-secret")
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("lvk_") and "shown this once" in page.inner_text("main")
    page.locator("button[data-copy=new-secret]").click()
    page.wait_for_selector("text=Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    tab.check(f"05-api-key-created-{scheme}")
    with httpx.Client(base_url=site.url, timeout=30, headers={"Authorization": f"Bearer {secret}"}) as api:
        assert api.get(f"/api/v1/tenants/{site.tenant_id}").status_code == 200
    page.reload()
    assert secret not in page.content(), "the secret is shown once"
    row = page.locator("tbody tr", has_text=f"exporter {scheme}")
    assert row.count() == 1 and "tenant:read" in row.inner_text()

    # The people page lists the new owner; the audit log shows what they did, filtered to them.
    menu.get_by_role("link", name="Members").click()
    assert email in page.inner_text("main")
    tab.check(f"06-members-{scheme}")
    menu.get_by_role("link", name="Audit log").click()
    page.get_by_label("Action").fill("source.created")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r".*action=source\.created.*"))
    assert email in page.locator("tbody tr").first.inner_text()
    tab.check(f"07-audit-filtered-{scheme}")
    menu.get_by_role("link", name="Single sign-on").click()
    page.wait_for_selector("text=Connect an identity provider")
    tab.check(f"08-sso-{scheme}")
    page.locator("#sso-name").fill(f"Corp {scheme}")
    page.locator("#sso-issuer").fill("https://login.corp.example")
    page.locator("#sso-client-id").fill("livora")
    page.locator("#sso-client-secret").fill("a client secret")
    page.locator("#sso-domains").fill(f"{scheme}.corp.example")
    page.get_by_role("button", name="Connect").click()
    page.wait_for_selector(f"text=Corp {scheme} was connected.")
    page.get_by_text(f"Change Corp {scheme}").click()
    assert page.locator("details[open] input[name=client_secret]").input_value() == ""
    tab.check(f"09-sso-connected-{scheme}")
    tab.close()
