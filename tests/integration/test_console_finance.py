"""The console's finance pages over HTTP: invoices with filters, an invoice and its credit notes, the draft
preview, usage, revenue, CSV downloads; and a workspace's own billing, which never shows another's."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Awaitable, Callable
from typing import Any

from tests.integration.test_console_security import browser, csrf_of
from tests.support.billing import backdate_tenant, run
from tests.support.server import LiveServer
from tests.support.world import World

Aio = Callable[[Awaitable[Any]], Any]
SEP = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
AFTER = dt.datetime(2026, 10, 1, 1, tzinfo=dt.UTC)


def invoices(world: World, aio: Aio) -> tuple[str, str]:
    """A finalised September invoice for tenant A, a September draft for tenant B."""
    for tenant in (world.a, world.b):
        backdate_tenant(world, aio, tenant.id, dt.datetime(2026, 8, 1, tzinfo=dt.UTC))
    a = run(world, aio, lambda s: s.billing.draft(world.a.id, SEP, AFTER))
    run(world, aio, lambda s: s.billing.finalize(a.id, AFTER, push=False))
    b = run(world, aio, lambda s: s.billing.draft(world.b.id, SEP, AFTER))
    return a.id, b.id


def test_finance_lists_filters_opens_and_exports_invoices(server: LiveServer, world: World, aio: Aio) -> None:
    a_invoice, b_invoice = invoices(world, aio)
    with browser(server, world.platform["finance"]) as client:
        page = client.get("/console/finance")
        assert page.status_code == 200, page.text
        assert a_invoice in page.text and b_invoice in page.text and "LIV-000001" in page.text
        assert 'href="/console/finance" aria-current="page"' in page.text, "Finance is in the menu, current"
        drafts = client.get("/console/finance", params={"status": "draft"}).text
        assert b_invoice in drafts and a_invoice not in drafts
        only_a = client.get("/console/finance", params={"tenant_id": world.a.id, "period": "2026-09"}).text
        assert a_invoice in only_a and b_invoice not in only_a
        assert "No invoice matches these filters" in client.get("/console/finance", params={"period": "2025-01"}).text
        # A malformed period is no filter, not a 500.
        assert client.get("/console/finance", params={"period": "September"}).status_code == 200
        export = re.search(r'href="(/api/v1/billing/exports/invoices\.csv\?[^"]+)"', only_a).group(1)  # type: ignore[union-attr]
        rows = list(csv.DictReader(io.StringIO(client.get(export.replace("&amp;", "&")).text)))
        assert [r["id"] for r in rows] == [a_invoice]

        detail = client.get(f"/console/finance/invoices/{a_invoice}")
        assert detail.status_code == 200 and "Invoice LIV-000001" in detail.text and " plan</td>" in detail.text
        printable = client.get(f"/api/v1/billing/invoices/{a_invoice}/html")
        assert f'href="/api/v1/billing/invoices/{a_invoice}/html"' in detail.text and "LIV-000001" in printable.text
        assert "No credit notes" in detail.text

        token = csrf_of(client, f"/console/finance/invoices/{a_invoice}")
        refused = client.post(
            f"/console/finance/invoices/{a_invoice}/credit-notes", data={"amount": "1", "reason": "x"}
        )
        assert refused.status_code == 403, "no CSRF token, no credit note"
        bad = client.post(
            f"/console/finance/invoices/{a_invoice}/credit-notes",
            data={"_csrf": token, "amount": "twelve", "reason": "goodwill"},
        )
        assert bad.status_code == 400 and "Write the amount like 12.50" in bad.text
        done = client.post(
            f"/console/finance/invoices/{a_invoice}/credit-notes",
            data={"_csrf": token, "amount": "0.50", "reason": "goodwill gesture"},
        )
        assert done.status_code == 303, done.text
        shown = client.get(f"/console/finance/invoices/{a_invoice}").text
        assert "LIVCN-000001" in shown and "0.50 EUR" in shown and "goodwill gesture" in shown
        api = client.get(f"/api/v1/billing/invoices/{a_invoice}").json()
        assert api["credited"] == 50 and [n["amount"] for n in api["credit_notes"]] == [50]

        paid = client.post(
            f"/console/finance/invoices/{a_invoice}/payments", data={"_csrf": token, "reference": "wire 42"}
        )
        assert (
            paid.status_code == 303 and client.get(f"/api/v1/billing/invoices/{a_invoice}").json()["status"] == "paid"
        )
        assert "Payment" in client.get(f"/console/finance/invoices/{a_invoice}").text
        assert client.get("/console/finance/invoices/inv_missing").status_code == 404


def test_finance_previews_a_draft_and_reads_usage_and_revenue(server: LiveServer, world: World, aio: Aio) -> None:
    a_invoice, _ = invoices(world, aio)
    with browser(server, world.platform["finance"]) as client:
        empty = client.get("/console/finance/draft")
        assert empty.status_code == 200 and "Choose a tenant to preview" in empty.text
        page = client.get("/console/finance/draft", params={"tenant_id": world.a.id})
        assert page.status_code == 200 and "Nothing is stored" in page.text
        api = client.get(f"/api/v1/tenants/{world.a.id}/billing/draft").json()
        assert api["plan"] in page.text
        total = re.search(r"<strong>([^<]+)</strong></td></tr>\s*</tfoot>", page.text).group(1)  # type: ignore[union-attr]
        assert (
            total.endswith(api["currency"].upper())
            and int(total.split()[0].replace(",", "").replace(".", "")) == (api["total"])
        )
        assert "No such tenant" in client.get("/console/finance/draft", params={"tenant_id": "ten_nope"}).text
        listed = client.get("/api/v1/billing/invoices").json()["items"]
        assert len(listed) == 2, "the preview drafted nothing"

        usage = client.get("/console/finance/usage")
        assert usage.status_code == 200 and "Tenant A" in usage.text and "Tenant B" in usage.text
        revenue = client.get("/console/finance/revenue", params={"period": "2026-09"})
        assert revenue.status_code == 200 and "Revenue, September 2026" in revenue.text
        summary = client.get("/api/v1/billing/revenue", params={"period": "2026-09"}).json()
        (eur,) = summary["rows"]
        assert eur["invoices"] == 1 and f"{eur['total'] // 100:,}.{eur['total'] % 100:02d} EUR" in revenue.text
        assert "No finalised invoice" in client.get("/console/finance/revenue", params={"period": "2025-01"}).text
        assert a_invoice


def test_a_workspace_sees_only_its_own_billing(server: LiveServer, world: World, aio: Aio) -> None:
    a_invoice, b_invoice = invoices(world, aio)
    a, b = world.a.id, world.b.id
    for role in ("owner", "admin"):
        with browser(server, world.a.members[role]) as client:
            page = client.get(f"/console/t/{a}/billing")
            assert page.status_code == 200 and a_invoice in page.text and b_invoice not in page.text
            assert f'href="/console/t/{a}/billing"' in page.text, "Billing is in the workspace menu"
            assert "Nothing is stored" in page.text and "Usage this period" in page.text
            detail = client.get(f"/console/t/{a}/billing/invoices/{a_invoice}")
            assert detail.status_code == 200 and f"/api/v1/tenants/{a}/invoices/{a_invoice}/html" in detail.text
            assert "Issue credit note" not in detail.text
            # B's invoice through A's door, and B's door: 404 as for a made-up id.
            assert client.get(f"/console/t/{a}/billing/invoices/{b_invoice}").status_code == 404
            assert client.get(f"/console/t/{b}/billing").status_code == 404
            assert client.get("/console/finance").status_code == 403
            assert client.get(f"/console/finance/invoices/{a_invoice}").status_code == 403
    with browser(server, world.a.members["analyst"]) as client:
        assert client.get(f"/console/t/{a}/billing").status_code == 403
        assert "/billing" not in client.get(f"/console/t/{a}").text
