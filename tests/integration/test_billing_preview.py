"""The open period's draft preview: rated like the real draft, and nothing of it stored."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa

from billing import models as m
from control_plane.settings import Settings
from kernel.tenancy import dangerously_unscoped
from tests.support.api import problem
from tests.support.billing import CELL_SECRET, backdate_tenant, record, report, run, write_small_catalog
from tests.support.world import World

UTC = dt.UTC
AUG = dt.datetime(2026, 8, 10, tzinfo=UTC)
SEP = dt.datetime(2026, 9, 1, tzinfo=UTC)
OCT = dt.datetime(2026, 10, 1, tzinfo=UTC)
Aio = Callable[[Awaitable[Any]], Any]


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return msgspec.structs.replace(
        settings,
        cell_secret=CELL_SECRET,
        billing_job_interval_seconds=0,
        billing_catalog_path=write_small_catalog(tmp_path),
    )


def stored(world: World, aio: Aio) -> dict[str, int]:
    async def count() -> dict[str, int]:
        async with world.runtime.services() as services:
            with dangerously_unscoped():
                return {
                    table.__tablename__: int(await services.db.scalar(sa.select(sa.func.count()).select_from(table)))
                    for table in (m.Invoice, m.InvoiceLine, m.UsageRecord, m.UsageKey)
                }

    return aio(count())


def test_the_preview_rates_the_open_period_as_its_draft_will_and_stores_nothing(
    client: httpx.Client, world: World, aio: Aio
) -> None:
    a = world.a.id
    backdate_tenant(world, aio, a, AUG)
    sent = report(
        client,
        [
            record(a, "events", SEP + dt.timedelta(days=2), value=130),
            record(a, "tracked_users", SEP + dt.timedelta(days=3), keys=[f"u{i}" for i in range(7)]),
            record(a, "storage_bytes", SEP + dt.timedelta(days=4), value=2500),
        ],
    )
    assert sent.status_code == 200, sent.text
    before = stored(world, aio)
    mid = SEP + dt.timedelta(days=15)
    preview = run(world, aio, lambda s: s.billing.preview(a, mid))
    assert stored(world, aio) == before, "a preview writes no invoice, line or usage"
    assert (preview.period_start, preview.period_end, preview.plan, preview.currency) == (SEP, OCT, "growth", "eur")
    events = next(line for line in preview.lines if line.meter == "events")
    # 130 events, 10 included: of the 120 billable, 100 at 7 and 20 at 3.
    assert (events.quantity, events.billable, events.amount) == (130, 120, 100 * 7 + 20 * 3)
    assert preview.subtotal == sum(line.amount for line in preview.lines)
    assert preview.total == preview.subtotal + preview.tax
    # Every member is a seat: tenant A has one of each role, more than the three included.
    seats = next(line for line in preview.lines if line.meter == "seats")
    assert seats.quantity == preview.seats == len(world.a.members) and seats.amount == (preview.seats - 3) * 200

    # When the period has ended, the real draft says exactly what the preview said.
    draft = run(world, aio, lambda s: s.billing.draft(a, SEP, OCT + dt.timedelta(hours=1)))
    assert [(ln.kind, ln.meter, ln.quantity, ln.amount) for ln in draft.lines] == [
        (ln.kind, ln.meter, ln.quantity, ln.amount) for ln in preview.lines
    ]
    assert (draft.subtotal, draft.tax, draft.total) == (preview.subtotal, preview.tax, preview.total)


def test_the_preview_over_http_follows_the_invoice_rules(client: httpx.Client, world: World) -> None:
    a, b = world.a.id, world.b.id
    for who in (world.a.members["owner"], world.a.members["admin"], world.platform["finance"]):
        answer = client.get(f"/api/v1/tenants/{a}/billing/draft", headers=who.headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["tenant_id"] == a and body["lines"] and body["total"] == body["subtotal"] + body["tax"]
    problem(
        client.get(f"/api/v1/tenants/{a}/billing/draft", headers=world.a.members["analyst"].headers),
        403,
        "permission_denied",
    )
    problem(
        client.get(f"/api/v1/tenants/{b}/billing/draft", headers=world.a.members["owner"].headers),
        404,
        "tenant_not_found",
    )
    listed = client.get("/api/v1/billing/invoices", headers=world.platform["finance"].headers).json()
    assert listed["items"] == [], "previewing drafts nothing"
