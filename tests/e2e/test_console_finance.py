"""Finance in headless Chromium: signs in, previews a tenant's draft, opens an invoice, downloads the CSV;
axe-core on each page in both themes. Screenshots land in the test's temporary folder (never committed).

It reuses the console browser module's site (its own instance: fixtures are per module) and tabs.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane.db.models import Tenant
from control_plane.runtime import Runtime
from kernel.tenancy import dangerously_unscoped
from tests.e2e.test_console_browser import Site, Tab, chromium, site
from tests.support.world import PASSWORD

__all__ = ["chromium", "site"]

SEP = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
AFTER = dt.datetime(2026, 10, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def invoice_id(site: Site) -> str:
    """Tenant A's September invoice, finalised (the site's world starts with none)."""

    async def seed() -> str:
        runtime = Runtime.build(site.settings)
        try:
            async with runtime.services() as services:
                with dangerously_unscoped():
                    await services.db.execute(
                        sa.update(Tenant).where(Tenant.id == site.tenant_id).values(created_at=SEP)
                    )
                    await services.db.commit()
                draft = await services.billing.draft(site.tenant_id, SEP, AFTER)
                await services.billing.finalize(draft.id, AFTER, push=False)
                return draft.id
        finally:
            await runtime.close()

    # Its own thread: the module's playwright driver runs an event loop on this one.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, seed()).result()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_finance_previews_a_draft_opens_an_invoice_and_downloads_the_csv(
    chromium: Any, site: Site, invoice_id: str, tmp_path: Path, scheme: str
) -> None:
    tab = Tab(chromium, site, tmp_path, scheme=scheme)
    page = tab.page
    page.goto("/console/finance")
    page.get_by_label("Work email").fill("finance@example.com")
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/finance")
    menu = page.get_by_role("navigation", name="Main")
    assert menu.get_by_role("link", name="Finance").get_attribute("aria-current") == "page"
    tab.check(f"01-invoices-{scheme}")

    # The draft preview, reached by keyboard: choose the tenant, then Enter on the button.
    page.get_by_role("navigation", name="Finance pages").get_by_role("link", name="Draft preview").click()
    page.wait_for_url("**/console/finance/draft")
    tab.check(f"02-draft-empty-{scheme}")
    page.get_by_label("Tenant", exact=True).select_option(label="Tenant A")
    page.get_by_role("button", name="Preview").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/console/finance/draft?tenant_id={site.tenant_id}")
    preview = page.get_by_role("region", name=dt.datetime.now(dt.UTC).strftime("%B %Y") + " so far")
    assert "Nothing is stored" in preview.inner_text()
    assert preview.get_by_role("rowheader", name="Total", exact=True).is_visible()
    tab.check(f"03-draft-{scheme}")

    # The finalised invoice, from the filtered list.
    page.goto("/console/finance?status=finalised")
    page.get_by_role("link", name="LIV-", exact=False).first.click()
    page.wait_for_url(f"**/console/finance/invoices/{invoice_id}")
    assert page.locator("h1").inner_text().startswith("Invoice LIV-")
    assert page.get_by_role("link", name="Printable invoice").get_attribute("href") == (
        f"/api/v1/billing/invoices/{invoice_id}/html"
    )
    tab.check(f"04-invoice-{scheme}")

    # The CSV of the list as filtered: the API's export, downloaded by the browser with its session.
    page.goto(f"/console/finance?tenant_id={site.tenant_id}")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download invoices (CSV)").click()
    saved = tmp_path / f"invoices-{scheme}.csv"
    download.value.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [r["id"] for r in rows] == [invoice_id] and rows[0]["status"] == "finalised"

    for path, name in (("/console/finance/usage", "usage"), ("/console/finance/revenue?period=2026-09", "revenue")):
        page.goto(path)
        tab.check(f"05-{name}-{scheme}")
    tab.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_an_owner_reads_the_workspace_billing(
    chromium: Any, site: Site, invoice_id: str, tmp_path: Path, scheme: str
) -> None:
    tab = Tab(chromium, site, tmp_path, scheme=scheme)
    tab.sign_in_as(site.owner)
    page = tab.page
    page.goto(f"/console/t/{site.tenant_id}")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
    page.wait_for_url(f"**/console/t/{site.tenant_id}/billing")
    assert "Nothing is stored" in page.inner_text("main")
    tab.check(f"01-workspace-billing-{scheme}")
    page.get_by_role("link", name="LIV-", exact=False).first.click()
    page.wait_for_url(f"**/billing/invoices/{invoice_id}")
    assert page.get_by_role("button", name="Issue credit note").count() == 0
    tab.check(f"02-workspace-invoice-{scheme}")
    tab.close()
