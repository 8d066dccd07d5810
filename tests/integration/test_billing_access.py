"""Who sees which invoices: finance and ops admins all; a tenant's owners and admins their own only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.support.api import problem
from tests.support.billing import backdate_tenant, run
from tests.support.world import World

Aio = Callable[[Awaitable[Any]], Any]
SEP = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)


def _invoices(world: World, aio: Aio) -> tuple[str, str]:
    ids = []
    for tenant in (world.a, world.b):
        backdate_tenant(world, aio, tenant.id, dt.datetime(2026, 8, 1, tzinfo=dt.UTC))
        draft = run(
            world, aio, lambda s, t=tenant.id: s.billing.draft(t, SEP, dt.datetime(2026, 10, 1, 1, tzinfo=dt.UTC))
        )
        ids.append(draft.id)
    return ids[0], ids[1]


def test_tenants_see_only_their_own_invoices(client: httpx.Client, world: World, aio: Aio) -> None:
    a_invoice, b_invoice = _invoices(world, aio)
    a, b = world.a.id, world.b.id
    for role in ("owner", "admin"):
        headers = world.a.members[role].headers
        listed = client.get(f"/api/v1/tenants/{a}/invoices", headers=headers).json()["items"]
        assert [i["id"] for i in listed] == [a_invoice]
        assert client.get(f"/api/v1/tenants/{a}/invoices/{a_invoice}", headers=headers).status_code == 200
        # B's invoice through A's door: as missing as a made-up id.
        problem(client.get(f"/api/v1/tenants/{a}/invoices/{b_invoice}", headers=headers), 404, "invoice_not_found")
        problem(client.get(f"/api/v1/tenants/{a}/invoices/{b_invoice}/html", headers=headers), 404, "invoice_not_found")
        # B's own door is closed to A's people, and the finance API too.
        problem(client.get(f"/api/v1/tenants/{b}/invoices", headers=headers), 404, "tenant_not_found")
        problem(client.get(f"/api/v1/tenants/{b}/usage", headers=headers), 404, "tenant_not_found")
        problem(client.get("/api/v1/billing/invoices", headers=headers), 403, "permission_denied")
        problem(client.get(f"/api/v1/billing/invoices/{a_invoice}", headers=headers), 403, "permission_denied")
        problem(client.get("/api/v1/billing/exports/invoices.csv", headers=headers), 403, "permission_denied")
    for role in ("analyst", "marketer", "sales", "viewer"):
        headers = world.a.members[role].headers
        problem(client.get(f"/api/v1/tenants/{a}/invoices", headers=headers), 403, "permission_denied")
        problem(client.get(f"/api/v1/tenants/{a}/usage", headers=headers), 403, "permission_denied")
    for key in world.a.keys.values():
        problem(client.get(f"/api/v1/tenants/{a}/invoices", headers=key.headers), 403, "permission_denied")
    problem(client.get(f"/api/v1/tenants/{a}/invoices", headers=world.outsider.headers), 404, "tenant_not_found")
    for role in ("finance", "ops_admin"):
        headers = world.platform[role].headers
        everyone = client.get("/api/v1/billing/invoices", headers=headers).json()["items"]
        assert sorted(i["id"] for i in everyone) == sorted([a_invoice, b_invoice])
        assert client.get(f"/api/v1/tenants/{b}/invoices/{b_invoice}", headers=headers).status_code == 200
    # ops_viewer reads (it reads everything) but changes nothing.
    viewer = world.platform["ops_viewer"].headers
    assert client.get(f"/api/v1/billing/invoices/{a_invoice}", headers=viewer).status_code == 200
    problem(client.post(f"/api/v1/billing/invoices/{a_invoice}/refresh", headers=viewer), 403, "permission_denied")
