"""End to end: a tenant ingests N events through its cell; the cell reports usage; the invoice bills N;
Stripe (localstripe) collects it through a signed webhook. And a throttling plan over its quota gets 429s."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import stripe

from billing.catalog import load_catalog
from billing.prices import rate
from control_plane.settings import Settings
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, HttpConfigFetcher
from data_plane.settings import CellSettings
from data_plane.stream.log import LogStream
from tests.support.api import problem
from tests.support.billing import CELL_SECRET, backdate_tenant, run, write_small_catalog
from tests.support.cell import drain
from tests.support.localstripe_server import LocalStripe, free_port
from tests.support.server import LiveServer
from tests.support.world import World

WEBHOOK_SECRET = "whsec_scenario"
Aio = Callable[[Awaitable[Any]], Any]


@dataclass
class Stack:
    control_plane: LiveServer
    cell: LiveServer
    stripe: LocalStripe
    # What the cell's pipeline needs: billed usage is reported once each event's outcome is known.
    settings: CellSettings | None = None
    stream_path: Path | None = None


@pytest.fixture
def stripe_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, stripe_port: int) -> Settings:
    return msgspec.structs.replace(
        settings,
        cell_secret=CELL_SECRET,
        billing_job_interval_seconds=0,
        billing_catalog_path=write_small_catalog(tmp_path),
        billing_payments_driver="stripe",
        stripe_api_key="sk_test_scenario",
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_api_base=f"http://127.0.0.1:{stripe_port}",
    )


@pytest.fixture
def stack(server: LiveServer, world: World, tmp_path: Path, stripe_port: int) -> Iterator[Stack]:
    """The live control plane, a cell that pulls config from it and pushes usage to it, and localstripe."""
    localstripe = LocalStripe(stripe_port).start()
    cell_settings = CellSettings(
        data_dir=str(tmp_path / "cellvar"),
        control_plane_url=server.url,
        cell_secret=CELL_SECRET,
        cell_id="cell-scenario",
        usage_push_seconds=0.2,
    )
    keeper = ConfigKeeper(
        HttpConfigFetcher(server.url, CELL_SECRET, timeout=2), cell_settings.config_cache_path, interval=0.2
    )
    cell = LiveServer(create_cell_app(cell_settings, keeper, LogStream(tmp_path / "stream.db"))).start()
    yield Stack(server, cell, localstripe, cell_settings, tmp_path / "stream.db")
    cell.stop()
    localstripe.stop()


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def batch(n: int, users: int) -> dict[str, Any]:
    return {
        "batch": [
            {"type": "track", "event": "Viewed", "userId": f"user-{i % users}", "messageId": str(uuid.uuid4())}
            for i in range(n)
        ]
    }


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def usage(client: httpx.Client, world: World, tenant_id: str) -> dict[str, int]:
    items = client.get(f"/api/v1/tenants/{tenant_id}/usage", headers=world.platform["finance"].headers).json()["items"]
    return {item["meter"]: item["quantity"] for item in items}


def test_n_events_through_the_cell_are_invoiced_and_paid_through_stripe(
    client: httpx.Client, world: World, aio: Aio, stack: Stack, settings: Settings
) -> None:
    catalog = load_catalog(Path(settings.billing_catalog_path))
    growth = catalog.plan("growth")
    n, users = 137, 7
    now = dt.datetime.now(dt.UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    backdate_tenant(world, aio, world.a.id, start - dt.timedelta(days=40))  # a whole period on growth
    httpx.post(
        f"{stack.stripe.url}/_config/webhooks/livora",
        data={"url": stack.control_plane.url + "/api/v1/billing/webhooks/stripe", "secret": WEBHOOK_SECRET},
    ).raise_for_status()
    with httpx.Client(base_url=stack.cell.url, timeout=10) as cell:
        wait_for(lambda: cell.get("/ready").status_code == 200)
        sent = 0
        for size in (60, 60, 17):
            response = cell.post("/v1/batch", json=batch(size, users), headers=basic(world.a.write_key))
            assert response.status_code == 202, response.text
            sent += size
    assert sent == n
    asyncio.run(drain(stack))
    # The cell's usage pusher reports what it billed; the control plane counts it once.
    wait_for(lambda: usage(client, world, world.a.id)["events"] == n)
    wait_for(lambda: usage(client, world, world.a.id)["tracked_users"] == users)
    time.sleep(1)  # further pushes must not add anything
    assert usage(client, world, world.a.id)["events"] == n

    draft = run(world, aio, lambda s: s.billing.draft(world.a.id, start, now))
    invoice = run(world, aio, lambda s: s.billing.finalize(draft.id, end + dt.timedelta(seconds=1)))
    events = next(line for line in invoice.lines if line.meter == "events")
    assert events.quantity == n and events.included == 10
    assert events.amount == rate(growth.component("events").price, n - 10).amount == 100 * 7 + 27 * 3
    users_line = next(line for line in invoice.lines if line.meter == "tracked_users")
    assert users_line.quantity == users and users_line.amount == 6 * 20 + 100
    assert invoice.payment_state == "pushed" and invoice.payment_ref
    assert [line.amount for line in invoice.lines if line.kind == "base_fee"] == [growth.base_fee]

    remote = stripe.StripeClient(
        "sk_test_scenario",
        base_addresses={"api": stack.stripe.url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
    )
    assert remote.v1.invoices.retrieve(invoice.payment_ref).total == invoice.total
    customer = remote.v1.invoices.retrieve(invoice.payment_ref).customer
    card = remote.v1.payment_methods.create(
        {"type": "card", "card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2031, "cvc": "314"}}
    )
    remote.v1.payment_methods.attach(card.id, {"customer": customer})
    remote.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": card.id}})
    remote.v1.invoices.pay(invoice.payment_ref)
    owner = world.a.members["owner"].headers
    paid = wait_for(
        lambda: (
            client.get(f"/api/v1/tenants/{world.a.id}/invoices/{invoice.id}", headers=owner).json()["status"] == "paid"
        )
    )
    assert paid


def test_a_throttling_plan_over_its_quota_gets_429_at_the_cell(
    client: httpx.Client, world: World, stack: Stack
) -> None:
    changed = client.post(
        f"/api/v1/tenants/{world.b.id}/billing/plan", json={"plan": "free"}, headers=world.platform["finance"].headers
    )
    assert changed.status_code == 200, changed.text
    with httpx.Client(base_url=stack.cell.url, timeout=10) as cell:
        wait_for(lambda: cell.get("/ready").status_code == 200)
        # free: 50 events a month, then throttled.
        assert cell.post("/v1/batch", json=batch(50, 5), headers=basic(world.b.write_key)).status_code == 202
        asyncio.run(drain(stack))
        wait_for(lambda: usage(client, world, world.b.id)["events"] == 50)

        def refused() -> httpx.Response | None:
            response = cell.post("/v1/batch", json=batch(1, 1), headers=basic(world.b.write_key))
            return response if response.status_code == 429 else None

        response = wait_for(refused)
        problem(response, 429, "monthly_quota_exceeded")
        now = dt.datetime.now(dt.UTC)
        end = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=32)).replace(day=1)
        assert abs(int(response.headers["Retry-After"]) - (end - now).total_seconds()) < 30
        # Tenant A (growth, overage) is not throttled.
        assert cell.post("/v1/batch", json=batch(3, 1), headers=basic(world.a.write_key)).status_code == 202
    audit = client.get(
        f"/api/v1/tenants/{world.b.id}/audit",
        params={"action": "quota.warned"},
        headers=world.b.members["owner"].headers,
    ).json()
    assert sorted(e["details"]["threshold"] for e in audit["items"]) == [80, 100]
