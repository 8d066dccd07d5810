"""Usage intake, drafts, late usage, finalisation, immutability, proration, corrections, exports: over HTTP."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from billing.catalog import load_catalog
from billing.prices import rate
from control_plane.billing.jobs import run_billing_cycle
from control_plane.settings import Settings
from kernel.db import create_engine
from tests.support.api import outbox, problem
from tests.support.billing import CELL_SECRET, backdate_tenant, record, report, run, write_small_catalog
from tests.support.world import World

UTC = dt.UTC
AUG = dt.datetime(2026, 8, 10, tzinfo=UTC)
SEP = dt.datetime(2026, 9, 1, tzinfo=UTC)
OCT = dt.datetime(2026, 10, 1, tzinfo=UTC)
NOV = dt.datetime(2026, 11, 1, tzinfo=UTC)
GRACE = dt.timedelta(days=3)
Aio = Callable[[Awaitable[Any]], Any]


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return msgspec.structs.replace(
        settings,
        cell_secret=CELL_SECRET,
        billing_job_interval_seconds=0,
        billing_grace_seconds=int(GRACE.total_seconds()),
        billing_catalog_path=write_small_catalog(tmp_path),
    )


@pytest.fixture
def catalog(settings: Settings):
    return load_catalog(Path(settings.billing_catalog_path))


@pytest.fixture
def old_world(world: World, aio: Aio) -> World:
    """Tenants A and B, both on growth since 10 August."""
    backdate_tenant(world, aio, world.a.id, AUG)
    backdate_tenant(world, aio, world.b.id, AUG)
    return world


def finance(world: World) -> dict[str, str]:
    return world.platform["finance"].headers


def invoice_of(client: httpx.Client, world: World, tenant_id: str, period: str) -> dict[str, Any]:
    page = client.get(
        "/api/v1/billing/invoices", params={"tenant_id": tenant_id, "period": period}, headers=finance(world)
    )
    assert page.status_code == 200, page.text
    (item,) = page.json()["items"]
    detail = client.get(f"/api/v1/billing/invoices/{item['id']}", headers=finance(world))
    assert detail.status_code == 200
    return detail.json()


def line(invoice: dict[str, Any], meter: str, kind: str = "usage") -> dict[str, Any] | None:
    found = [ln for ln in invoice["lines"] if ln["meter"] == meter and ln["kind"] == kind]
    assert len(found) <= 1
    return found[0] if found else None


def cycle(world: World, aio: Aio, now: dt.datetime) -> Any:
    return run(world, aio, lambda services: run_billing_cycle(services, now))


# --- intake ----------------------------------------------------------------------------------


def test_a_report_sent_twice_is_counted_once(client: httpx.Client, old_world: World) -> None:
    world = old_world
    at = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    records = [
        record(world.a.id, "events", at, value=40, record_id="r-1"),
        record(world.a.id, "events", at, value=2, record_id="r-2"),
        record(world.a.id, "tracked_users", at, keys=["u1", "u2"], record_id="r-3"),
    ]
    first = report(client, records)
    assert first.status_code == 200, first.text
    assert first.json() == {"stored": 3, "duplicates": 0}
    assert report(client, records).json() == {"stored": 0, "duplicates": 3}
    # A report repeating one old record with one new one; the new one counts, the old one does not.
    later = at + dt.timedelta(hours=1)
    mixed = [records[0], record(world.a.id, "tracked_users", later, keys=["u2", "u3"], record_id="r-4")]
    assert report(client, mixed).json() == {"stored": 1, "duplicates": 1}
    usage = client.get(f"/api/v1/tenants/{world.a.id}/usage", headers=finance(world)).json()
    by_meter = {item["meter"]: item["quantity"] for item in usage["items"]}
    assert by_meter["events"] == 42
    # Distinct users across the period (u1, u2, u3), not the sum of hourly counts (2 + 2).
    assert by_meter["tracked_users"] == 3
    # Tenant B saw none of it.
    usage_b = client.get(f"/api/v1/tenants/{world.b.id}/usage", headers=finance(world)).json()
    assert {i["meter"]: i["quantity"] for i in usage_b["items"]}["events"] == 0


def test_usage_intake_needs_the_cell_credential_and_known_tenants(client: httpx.Client, old_world: World) -> None:
    at = dt.datetime.now(UTC)
    rec = [record(old_world.a.id, "events", at, value=1)]
    problem(report(client, rec, secret="wrong"), 401, "invalid_cell_credential")
    problem(report(client, rec, secret=old_world.a.members["owner"].token), 401, "invalid_cell_credential")
    problem(report(client, [record("ten_nope", "events", at, value=1)]), 422, "unknown_tenant")
    problem(report(client, [record(old_world.a.id, "events", at, value=-5)]), 400, "invalid_record")
    problem(report(client, [record(old_world.a.id, "seats", at, value=5)]), 400, "invalid_record")


# --- the invoice of a period, late usage, exactly once -------------------------------------------------


def test_late_usage_is_billed_once_on_the_right_invoice(
    client: httpx.Client, old_world: World, aio: Aio, catalog
) -> None:
    world = old_world
    tenant = world.a.id
    growth = catalog.plan("growth")
    events_price = growth.component("events").price
    assert report(client, [record(tenant, "events", SEP + dt.timedelta(days=3), value=50)]).status_code == 200

    # 1 October: September closes as a draft.
    assert cycle(world, aio, OCT + dt.timedelta(minutes=5)).drafts == 2  # A and B
    draft = invoice_of(client, world, tenant, "2026-09")
    assert draft["status"] == "draft" and draft["number"] is None
    assert line(draft, "events")["quantity"] == 50

    # Late, but within the grace period: still on September's invoice.
    report(client, [record(tenant, "events", SEP + dt.timedelta(days=29, hours=23), value=30)])
    report(client, [record(tenant, "events", OCT + dt.timedelta(days=2), value=5)])  # October's
    cycle(world, aio, OCT + dt.timedelta(days=1))
    draft = invoice_of(client, world, tenant, "2026-09")
    assert draft["status"] == "draft" and line(draft, "events")["quantity"] == 80

    # Grace over: finalised, numbered, and frozen.
    report_ = cycle(world, aio, OCT + GRACE + dt.timedelta(minutes=1))
    assert len(report_.finalised) == 2
    september = invoice_of(client, world, tenant, "2026-09")
    assert september["status"] == "finalised" and september["number"].startswith("LIV-")
    events_line = line(september, "events")
    assert events_line["quantity"] == 80 and events_line["included"] == 10
    assert events_line["amount"] == rate(events_price, 70).amount == 70 * 7

    # Too late for September: 25 more September events arrive after finalisation.
    report(client, [record(tenant, "events", SEP + dt.timedelta(days=15), value=25)])
    assert invoice_of(client, world, tenant, "2026-09") == september  # untouched
    cycle(world, aio, NOV + dt.timedelta(minutes=5))
    october = invoice_of(client, world, tenant, "2026-10")
    adjustment = line(october, "events", "adjustment")
    assert adjustment is not None and adjustment["quantity"] == 25
    assert adjustment["usage_period_start"].startswith("2026-09-01")
    assert adjustment["amount"] == rate(events_price, 95).amount - rate(events_price, 70).amount
    assert line(october, "events")["quantity"] == 5

    # Re-running the cycle (and re-rating) never bills the late usage twice.
    cycle(world, aio, NOV + dt.timedelta(hours=1))
    cycle(world, aio, NOV + GRACE + dt.timedelta(minutes=1))
    october = invoice_of(client, world, tenant, "2026-10")
    assert october["status"] == "finalised"
    report(client, [record(tenant, "events", SEP + dt.timedelta(days=16), value=1)])  # later still
    cycle(world, aio, dt.datetime(2026, 12, 1, 0, 5, tzinfo=UTC))
    november = invoice_of(client, world, tenant, "2026-11")
    billed_for_september = sum(
        ln["quantity"]
        for inv in (september, october, november)
        for ln in inv["lines"]
        if ln["meter"] == "events" and ln["usage_period_start"].startswith("2026-09-01")
    )
    assert billed_for_september == 50 + 30 + 25 + 1
    # Invoices are numbered in the order they were finalised, without gaps.
    numbers = sorted(
        int(i["number"].removeprefix("LIV-"))
        for i in client.get("/api/v1/billing/invoices", params={"status": "finalised"}, headers=finance(world)).json()[
            "items"
        ]
    )
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) == 4


def test_a_finalised_invoice_cannot_be_altered_through_any_api(
    client: httpx.Client, old_world: World, aio: Aio
) -> None:
    world = old_world
    report(client, [record(world.a.id, "events", SEP + dt.timedelta(days=1), value=20)])
    cycle(world, aio, OCT + GRACE + dt.timedelta(minutes=1))
    invoice = invoice_of(client, world, world.a.id, "2026-09")
    invoice_id = invoice["id"]
    path = f"/api/v1/billing/invoices/{invoice_id}"
    problem(client.post(f"{path}/refresh", headers=finance(world)), 409, "invoice_immutable")
    problem(client.post(f"{path}/finalize", headers=finance(world)), 409, "invoice_immutable")
    for method in ("PUT", "PATCH", "DELETE"):
        assert client.request(method, path, headers=finance(world)).status_code == 405
    # A credit note corrects it without changing it.
    note = client.post(f"{path}/credit-notes", json={"amount": 500, "reason": "goodwill"}, headers=finance(world))
    assert note.status_code == 201, note.text
    assert note.json()["number"] == "LIVCN-000001"
    problem(
        client.post(
            f"{path}/credit-notes", json={"amount": invoice["total"], "reason": "too much"}, headers=finance(world)
        ),
        422,
        "credit_exceeds_total",
    )
    after = client.get(path, headers=finance(world)).json()
    for field in ("number", "subtotal", "tax", "total", "lines", "finalized_at", "period_start"):
        assert after[field] == invoice[field], field
    assert after["credited"] == 500 and [n["number"] for n in after["credit_notes"]] == ["LIVCN-000001"]
    # Paid invoices cannot be voided; payments move status only.
    paid = client.post(f"{path}/payments", json={"reference": "bank-transfer-42"}, headers=finance(world))
    assert paid.status_code == 200 and paid.json()["status"] == "paid"
    problem(client.post(f"{path}/void", headers=finance(world)), 409, "invalid_invoice_transition")
    problem(client.post(f"{path}/uncollectible", headers=finance(world)), 409, "invalid_invoice_transition")
    assert client.get(path, headers=finance(world)).json()["lines"] == invoice["lines"]


def test_draft_void_and_uncollectible_transitions(client: httpx.Client, old_world: World, aio: Aio) -> None:
    world = old_world
    cycle(world, aio, OCT + dt.timedelta(minutes=1))
    a = invoice_of(client, world, world.a.id, "2026-09")
    problem(
        client.post(f"/api/v1/billing/invoices/{a['id']}/void", headers=finance(world)),
        409,
        "invalid_invoice_transition",
    )
    finalised = client.post(f"/api/v1/billing/invoices/{a['id']}/finalize", headers=finance(world))
    assert finalised.status_code == 200 and finalised.json()["status"] == "finalised"
    assert (
        client.post(f"/api/v1/billing/invoices/{a['id']}/uncollectible", headers=finance(world)).json()["status"]
        == "uncollectible"
    )
    assert client.post(f"/api/v1/billing/invoices/{a['id']}/void", headers=finance(world)).json()["status"] == "void"
    problem(client.get("/api/v1/billing/invoices/inv_missing", headers=finance(world)), 404, "invoice_not_found")


# --- plans, proration, tax, trials -------------------------------------------------------------------


def test_a_plan_change_mid_period_is_prorated(client: httpx.Client, world: World, aio: Aio, catalog) -> None:
    now = dt.datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    backdate_tenant(world, aio, world.a.id, start - dt.timedelta(days=40))
    change_at = start + dt.timedelta(days=10)
    if change_at > now:  # effective dates may not be in the past of the current plan, nor before this period
        change_at = start
    problem(
        client.post(f"/api/v1/tenants/{world.a.id}/billing/plan", json={"plan": "platinum"}, headers=finance(world)),
        400,
        "unknown_plan",
    )
    problem(
        client.post(
            f"/api/v1/tenants/{world.a.id}/billing/plan",
            json={"plan": "enterprise"},
            headers=world.a.members["owner"].headers,
        ),
        403,
        "permission_denied",
    )
    changed = client.post(
        f"/api/v1/tenants/{world.a.id}/billing/plan",
        json={"plan": "enterprise", "effective_at": change_at.isoformat()},
        headers=finance(world),
    )
    assert changed.status_code == 200, changed.text
    assert [s["plan"] for s in changed.json()["subscriptions"]] == ["growth", "enterprise"]
    tax = client.put(f"/api/v1/tenants/{world.a.id}/billing", json={"tax_rate_bp": 2000}, headers=finance(world))
    assert tax.status_code == 200 and tax.json()["tax_rate_bp"] == 2000
    # The tenant record follows (the cell config shows the new plan).
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=finance(world)).json()["plan"] == "enterprise"

    end = (start + dt.timedelta(days=32)).replace(day=1)
    invoice = run(world, aio, lambda s: s.billing.draft(world.a.id, start, now))
    detail = run(world, aio, lambda s: s.billing.finalize(invoice.id, end + dt.timedelta(seconds=1), push=False))
    period = (end - start).total_seconds()
    on_growth = (change_at - start).total_seconds()
    base = [ln for ln in detail.lines if ln.kind == "base_fee"]
    expected = [round(3000 * on_growth / period), round(60000 * (period - on_growth) / period)]
    assert [ln.amount for ln in base if ln.amount or on_growth] == [e for e in expected if e or on_growth]
    assert sum(ln.amount for ln in base) == sum(expected)
    assert detail.plan == "enterprise"
    assert detail.tax == (detail.subtotal * 2000 + 5000) // 10000
    assert detail.total == detail.subtotal + detail.tax


def test_a_trial_waives_base_fee_and_usage_before_its_end(client: httpx.Client, world: World, aio: Aio) -> None:
    now = dt.datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    backdate_tenant(world, aio, world.a.id, start - dt.timedelta(days=40))
    # Downgrade at the start of the period, then back to growth with its 10-day trial.
    client.post(
        f"/api/v1/tenants/{world.a.id}/billing/plan",
        json={"plan": "free", "effective_at": start.isoformat()},
        headers=finance(world),
    )
    trial = client.post(
        f"/api/v1/tenants/{world.a.id}/billing/plan",
        json={"plan": "growth", "effective_at": start.isoformat(), "trial": True},
        headers=finance(world),
    )
    assert trial.status_code == 200, trial.text
    trial_end = start + dt.timedelta(days=10)
    assert trial.json()["subscriptions"][-1]["trial_ends_at"].startswith(trial_end.date().isoformat())
    report(
        client,
        [
            record(world.a.id, "events", start + dt.timedelta(days=2), value=500),  # in the trial: free
            record(world.a.id, "events", trial_end + dt.timedelta(hours=1), value=30),
        ],
    )
    invoice = run(world, aio, lambda s: s.billing.draft(world.a.id, start, end + dt.timedelta(seconds=1)))
    detail = run(world, aio, lambda s: s.billing.invoice(invoice.id))
    (base,) = [ln for ln in detail.lines if ln.kind == "base_fee"]
    period = (end - start).total_seconds()
    assert base.amount == round(3000 * (end - trial_end).total_seconds() / period)
    events = next(ln for ln in detail.lines if ln.meter == "events")
    assert events.quantity == 30 and events.amount == 20 * 7


# --- quotas -----------------------------------------------------------------------------------------


def test_quota_warnings_at_80_and_100_percent_once_each(client: httpx.Client, world: World, settings: Settings) -> None:
    now = dt.datetime.now(UTC)
    owner = world.a.members["owner"]
    report(client, [record(world.a.id, "events", now, value=790)])  # quota 1000: 79 %

    def warnings() -> list[dict[str, Any]]:
        audit = f"/api/v1/tenants/{world.a.id}/audit"
        return list(client.get(audit, params={"action": "quota.warned"}, headers=owner.headers).json()["items"])

    assert warnings() == []
    report(client, [record(world.a.id, "events", now, value=10)])  # 80 %
    report(client, [record(world.a.id, "events", now, value=10)])  # 81 %: no second warning
    assert [w["details"]["threshold"] for w in warnings()] == [80]
    report(client, [record(world.a.id, "events", now, value=500)])  # 131 %
    report(client, [record(world.a.id, "events", now, value=1)])
    assert sorted(w["details"]["threshold"] for w in warnings()) == [80, 100]
    mails = [m for m in outbox(settings) if "quota" in m["subject"]]
    recipients = sorted({m["to"] for m in mails})
    assert recipients == sorted({world.a.members["owner"].email, world.a.members["admin"].email})
    assert len(mails) == 2 * len(recipients)
    assert any("billed as overage" in m["text"] for m in mails)  # growth bills overage, no throttle
    config = client.get("/internal/v1/cell/config", headers={"Authorization": f"Bearer {CELL_SECRET}"}).json()
    tenant = next(t for t in config["tenants"] if t["id"] == world.a.id)
    assert tenant["limits"]["events_per_month"] == 1000 and tenant["limits"]["over_quota"] == "overage"
    assert tenant["quota_exceeded_until"] is None


def test_a_throttling_plan_over_its_quota_is_flagged_in_the_cell_config(client: httpx.Client, world: World) -> None:
    now = dt.datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    changed = client.post(f"/api/v1/tenants/{world.b.id}/billing/plan", json={"plan": "free"}, headers=finance(world))
    assert changed.status_code == 200, changed.text
    headers = {"Authorization": f"Bearer {CELL_SECRET}"}
    report(client, [record(world.b.id, "events", now, value=49)])
    tenant = next(
        t for t in client.get("/internal/v1/cell/config", headers=headers).json()["tenants"] if t["id"] == world.b.id
    )
    assert tenant["limits"]["over_quota"] == "throttle" and tenant["quota_exceeded_until"] is None
    report(client, [record(world.b.id, "events", now, value=1)])
    deadline = time.monotonic() + 10  # the control plane reuses quota figures for a few seconds
    while True:
        config = client.get("/internal/v1/cell/config", headers=headers).json()
        tenant = next(t for t in config["tenants"] if t["id"] == world.b.id)
        if tenant["quota_exceeded_until"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    assert dt.datetime.fromisoformat(tenant["quota_exceeded_until"]) == end
    other = next(
        t for t in client.get("/internal/v1/cell/config", headers=headers).json()["tenants"] if t["id"] == world.a.id
    )
    assert other["quota_exceeded_until"] is None


# --- finance views: exports, revenue, HTML ----------------------------------------------------------------


def test_exports_revenue_and_printable_html(client: httpx.Client, old_world: World, aio: Aio) -> None:
    world = old_world
    report(
        client,
        [
            record(world.a.id, "events", SEP + dt.timedelta(days=1), value=25),
            record(world.b.id, "events", SEP + dt.timedelta(days=1), value=5),
            record(world.a.id, "tracked_users", SEP + dt.timedelta(days=1), keys=["<script>x</script>", "u2", "u3"]),
        ],
    )
    cycle(world, aio, OCT + GRACE + dt.timedelta(minutes=1))
    exported = client.get("/api/v1/billing/exports/invoices.csv", params={"period": "2026-09"}, headers=finance(world))
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(r["tenant_id"] for r in rows) == sorted([world.a.id, world.b.id])
    lines = list(
        csv.DictReader(
            io.StringIO(
                client.get(
                    "/api/v1/billing/exports/invoice-lines.csv", params={"period": "2026-09"}, headers=finance(world)
                ).text
            )
        )
    )
    for row in rows:
        assert int(row["subtotal"]) == sum(int(ln["amount"]) for ln in lines if ln["invoice_id"] == row["id"])
    a_events = next(ln for ln in lines if ln["tenant_id"] == world.a.id and ln["meter"] == "events")
    assert a_events["quantity"] == "25" and a_events["amount"] == str(15 * 7)

    revenue = client.get("/api/v1/billing/revenue", params={"period": "2026-09"}, headers=finance(world)).json()
    (eur,) = revenue["rows"]
    assert eur["invoices"] == 2
    assert (
        eur["recurring"] + eur["usage"] + eur["adjustments"] == eur["subtotal"] == sum(int(r["subtotal"]) for r in rows)
    )
    assert eur["usage"] == sum(int(ln["amount"]) for ln in lines if ln["kind"] == "usage")

    invoice = invoice_of(client, world, world.a.id, "2026-09")
    page = client.get(
        f"/api/v1/tenants/{world.a.id}/invoices/{invoice['id']}/html", headers=world.a.members["admin"].headers
    )
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert invoice["number"] in page.text and "Tenant A" in page.text
    assert "Events accepted" in page.text and "0.00 EUR" in page.text
    assert "<script>" not in page.text


def test_every_aggregation_of_a_meter(client: httpx.Client, world: World) -> None:
    hour = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=3)
    a = world.a.id
    report(
        client,
        [
            record(a, "storage_bytes", hour, value=100),
            record(a, "storage_bytes", hour + dt.timedelta(hours=1), value=300),
            record(a, "storage_bytes", hour + dt.timedelta(hours=2), value=200),
            record(a, "api_reports", hour, value=7),
            record(a, "api_reports", hour, value=7),
            record(a, "api_reports", hour + dt.timedelta(hours=1), value=1),
            record(a, "retention_days", hour, value=30),
            record(a, "retention_days", hour + dt.timedelta(hours=2), value=90),
            record(a, "retention_days", hour + dt.timedelta(hours=1), value=60),
            record(a, "events", hour, value=5),
            record(a, "events", hour + dt.timedelta(hours=1), value=6),
            record(a, "tracked_users", hour, keys=["x", "y"]),
            record(a, "tracked_users", hour + dt.timedelta(hours=1), keys=["y", "z"]),
            record(a, "tracked_users", hour + dt.timedelta(hours=2), keys=["x"]),
        ],
    )
    items = client.get(f"/api/v1/tenants/{a}/usage", headers=world.a.members["admin"].headers).json()["items"]
    quantities = {i["meter"]: (i["aggregation"], i["quantity"]) for i in items}
    assert quantities["storage_bytes"] == ("max", 300)
    assert quantities["api_reports"] == ("count", 3)
    assert quantities["retention_days"] == ("latest", 90)  # the last in time, not the last received
    assert quantities["events"] == ("sum", 11)
    assert quantities["tracked_users"] == ("unique_count", 3)
    one = client.get(f"/api/v1/tenants/{a}/usage", params={"meter": "events"}, headers=world.a.members["admin"].headers)
    assert [i["meter"] for i in one.json()["items"]] == ["events"]
    problem(
        client.get(f"/api/v1/tenants/{a}/usage", params={"meter": "nope"}, headers=world.a.members["admin"].headers),
        400,
        "unknown_meter",
    )
    problem(
        client.get(
            f"/api/v1/tenants/{a}/usage", params={"period": "2026-13"}, headers=world.a.members["admin"].headers
        ),
        400,
        "validation_failed",
    )


def test_the_database_itself_refuses_to_change_a_finalised_invoice(
    client: httpx.Client, old_world: World, aio: Aio, database_url: str
) -> None:
    world = old_world
    report(client, [record(world.a.id, "events", SEP + dt.timedelta(days=1), value=20)])
    cycle(world, aio, OCT + GRACE + dt.timedelta(minutes=1))
    invoice = invoice_of(client, world, world.a.id, "2026-09")

    async def attempt(statement: str) -> str | None:
        engine = create_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(sa.text(statement), {"id": invoice["id"]})
        except DBAPIError as exc:
            return str(exc)
        finally:
            await engine.dispose()
        return None

    for statement in (
        "UPDATE billing_invoices SET total = total + 1 WHERE id = :id",
        "UPDATE billing_invoices SET number = 'LIV-999999' WHERE id = :id",
        "DELETE FROM billing_invoices WHERE id = :id",
        "UPDATE billing_invoice_lines SET amount = 0 WHERE invoice_id = :id",
        "DELETE FROM billing_invoice_lines WHERE invoice_id = :id",
        "INSERT INTO billing_invoice_lines (id, tenant_id, invoice_id, position, kind, description, quantity,"
        " included, billable, unit_size, amount, tiers) SELECT 'inl_x', tenant_id, id, 99, 'usage', 'x', 1, 0, 1, 1,"
        " 100, '[]' FROM billing_invoices WHERE id = :id",
    ):
        error = aio(attempt(statement))
        assert error is not None and "finalised invoices are immutable" in error, statement
    # What may change after finalisation still can: status, payment fields, credited.
    assert aio(attempt("UPDATE billing_invoices SET credited = 1, status = 'paid' WHERE id = :id")) is None
    after = client.get(f"/api/v1/billing/invoices/{invoice['id']}", headers=finance(world)).json()
    assert after["lines"] == invoice["lines"] and after["total"] == invoice["total"]
