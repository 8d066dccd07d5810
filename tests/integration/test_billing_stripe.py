"""The Stripe driver over real HTTP against localstripe: push, signed webhooks, dedup, store-then-process, outages."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import stripe
from sqlalchemy import select

from billing.models import PaymentEvent
from control_plane.billing.jobs import run_billing_cycle, sync_pending_payments
from control_plane.settings import Settings
from kernel.tenancy import dangerously_unscoped
from tests.support.api import problem
from tests.support.billing import CELL_SECRET, backdate_tenant, record, report, run, write_small_catalog
from tests.support.localstripe_server import LocalStripe, free_port
from tests.support.server import LiveServer
from tests.support.world import World

UTC = dt.UTC
AUG = dt.datetime(2026, 8, 10, tzinfo=UTC)
SEP = dt.datetime(2026, 9, 1, tzinfo=UTC)
AFTER_GRACE = dt.datetime(2026, 10, 4, 0, 1, tzinfo=UTC)
WEBHOOK_SECRET = "whsec_livora_tests"
WEBHOOK_PATH = "/api/v1/billing/webhooks/stripe"
Aio = Callable[[Awaitable[Any]], Any]


@pytest.fixture
def stripe_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, stripe_port: int) -> Settings:
    return msgspec.structs.replace(
        settings,
        cell_secret=CELL_SECRET,
        billing_job_interval_seconds=0,
        billing_grace_seconds=3 * 24 * 3600,
        billing_catalog_path=write_small_catalog(tmp_path),
        billing_payments_driver="stripe",
        stripe_api_key="sk_test_livora",
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_api_base=f"http://127.0.0.1:{stripe_port}",
    )


@pytest.fixture
def localstripe(stripe_port: int) -> Iterator[LocalStripe]:
    server = LocalStripe(stripe_port).start()
    yield server
    server.stop()


def stripe_client(url: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_livora", base_addresses={"api": url}, http_client=stripe.HTTPXClient(allow_sync_methods=True)
    )


def finance(world: World) -> dict[str, str]:
    return world.platform["finance"].headers


def september_invoice(client: httpx.Client, world: World) -> dict[str, Any]:
    items = client.get(
        "/api/v1/billing/invoices", params={"tenant_id": world.a.id, "period": "2026-09"}, headers=finance(world)
    ).json()["items"]
    assert len(items) == 1
    return client.get(f"/api/v1/billing/invoices/{items[0]['id']}", headers=finance(world)).json()


def bill_september(client: httpx.Client, world: World, aio: Aio, events: int = 40) -> None:
    backdate_tenant(world, aio, world.a.id, AUG)
    tax = client.put(
        f"/api/v1/tenants/{world.a.id}/billing",
        json={"tax_rate_bp": 2000, "billing_email": "ap@a.example"},
        headers=finance(world),
    )
    assert tax.status_code == 200, tax.text
    assert report(client, [record(world.a.id, "events", SEP + dt.timedelta(days=2), value=events)]).status_code == 200
    run(world, aio, lambda services: run_billing_cycle(services, AFTER_GRACE))


def signed(payload: bytes, timestamp: int, secret: str = WEBHOOK_SECRET) -> str:
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


def event(event_id: str, event_type: str, invoice: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "data": {
                "object": {
                    "object": "invoice",
                    "id": invoice["payment_ref"],
                    "status": "paid",
                    "metadata": {"livora_invoice_id": invoice["id"]},
                }
            },
        }
    ).encode()


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_a_finalised_invoice_is_paid_through_stripe_and_a_signed_webhook(
    client: httpx.Client, server: LiveServer, world: World, aio: Aio, localstripe: LocalStripe
) -> None:
    httpx.post(
        f"{localstripe.url}/_config/webhooks/livora", data={"url": server.url + WEBHOOK_PATH, "secret": WEBHOOK_SECRET}
    ).raise_for_status()
    bill_september(client, world, aio)
    invoice = september_invoice(client, world)
    assert invoice["status"] == "finalised" and invoice["payment_state"] == "pushed"
    assert invoice["payment_ref"].startswith("in_") and invoice["tax"] > 0

    remote = stripe_client(localstripe.url)
    pushed = remote.v1.invoices.retrieve(invoice["payment_ref"])
    assert pushed.status == "open" and pushed.total == invoice["total"] and pushed.currency == "eur"
    assert pushed.metadata["livora_invoice_id"] == invoice["id"]
    assert [line.amount for line in pushed.lines.data] == [ln["amount"] for ln in invoice["lines"] if ln["amount"]] + [
        invoice["tax"]
    ]
    account = client.get(f"/api/v1/tenants/{world.a.id}/billing", headers=finance(world)).json()
    customer = remote.v1.customers.retrieve(account["customer_ref"])
    assert customer.metadata["livora_tenant_id"] == world.a.id and customer.email == "ap@a.example"

    # The customer pays with a card; Stripe sends invoice.paid, signed, to the control plane.
    card = remote.v1.payment_methods.create(
        {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    remote.v1.payment_methods.attach(card.id, {"customer": customer.id})
    remote.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": card.id}})
    assert remote.v1.invoices.pay(invoice["payment_ref"]).status == "paid"
    wait_for(lambda: september_invoice(client, world)["status"] == "paid")

    async def stored() -> list[tuple[str, bool]]:
        async with world.runtime.services() as services, asyncio.timeout(5):
            with dangerously_unscoped():
                rows = (await services.db.execute(select(PaymentEvent.type, PaymentEvent.processed_at))).all()
        return [(t, p is not None) for t, p in rows]

    wait_for(lambda: ("invoice.paid", True) in aio(stored()))
    assert all(processed for _, processed in aio(stored()))
    audit = client.get(
        f"/api/v1/tenants/{world.a.id}/audit",
        params={"action": "invoice.paid"},
        headers=world.a.members["owner"].headers,
    ).json()
    assert len(audit["items"]) == 1


def test_webhooks_refuse_bad_signatures_stale_timestamps_and_process_replays_once(
    client: httpx.Client, world: World, aio: Aio, localstripe: LocalStripe
) -> None:
    bill_september(client, world, aio)
    invoice = september_invoice(client, world)
    payload = event("evt_livora_1", "invoice.paid", invoice)
    now = int(time.time())

    problem(client.post(WEBHOOK_PATH, content=payload), 401, "invalid_webhook_signature")
    problem(
        client.post(WEBHOOK_PATH, content=payload, headers={"Stripe-Signature": signed(payload, now, "whsec_other")}),
        401,
        "invalid_webhook_signature",
    )
    tampered = payload.replace(b"invoice.paid", b"invoice.void")
    problem(
        client.post(WEBHOOK_PATH, content=tampered, headers={"Stripe-Signature": signed(payload, now)}),
        401,
        "invalid_webhook_signature",
    )
    # Just outside the 300 s tolerance, timed from the request itself (a slow machine must not move it inside).
    problem(
        client.post(
            WEBHOOK_PATH, content=payload, headers={"Stripe-Signature": signed(payload, int(time.time()) - 305)}
        ),
        401,
        "invalid_webhook_signature",
    )
    problem(
        client.post(
            WEBHOOK_PATH, content=payload, headers={"Stripe-Signature": signed(payload, int(time.time()) + 305)}
        ),
        401,
        "invalid_webhook_signature",
    )
    assert september_invoice(client, world)["status"] == "finalised"

    first = client.post(WEBHOOK_PATH, content=payload, headers={"Stripe-Signature": signed(payload, now - 250)})
    assert first.status_code == 200 and first.json() == {"received": True, "duplicate": False}
    assert september_invoice(client, world)["status"] == "paid"
    # A replay of the same event (Stripe retries, or an attacker within the tolerance) changes nothing.
    again = client.post(WEBHOOK_PATH, content=payload, headers={"Stripe-Signature": signed(payload, now)})
    assert again.status_code == 200 and again.json() == {"received": True, "duplicate": True}
    audit = client.get(
        f"/api/v1/tenants/{world.a.id}/audit",
        params={"action": "invoice.paid"},
        headers=world.a.members["owner"].headers,
    ).json()
    assert len(audit["items"]) == 1


def test_a_stored_event_is_processed_later_if_processing_did_not_happen(
    client: httpx.Client, world: World, aio: Aio, localstripe: LocalStripe
) -> None:
    bill_september(client, world, aio)
    invoice = september_invoice(client, world)

    async def store_only() -> None:
        async with world.runtime.services() as services:
            with dangerously_unscoped():
                services.db.add(
                    PaymentEvent(
                        id="evt_crashed",
                        provider="stripe",
                        type="invoice.paid",
                        payload=json.loads(event("evt_crashed", "invoice.paid", invoice)),
                    )
                )
                await services.db.commit()

    aio(store_only())  # as if the process died between storing and processing
    assert september_invoice(client, world)["status"] == "finalised"
    run(world, aio, lambda services: run_billing_cycle(services, AFTER_GRACE + dt.timedelta(hours=1)))
    assert september_invoice(client, world)["status"] == "paid"


def test_stripe_unreachable_is_retried_later_and_nothing_is_lost(
    client: httpx.Client, world: World, aio: Aio, stripe_port: int
) -> None:
    bill_september(client, world, aio)  # no Stripe listening yet
    invoice = september_invoice(client, world)
    assert invoice["status"] == "finalised" and invoice["number"]
    assert invoice["payment_state"] == "pending" and invoice["push_attempts"] == 1
    assert "unreachable" in invoice["last_push_error"]
    # Not due yet: the retry waits for its back-off.
    assert aio(sync_pending_payments(world.runtime, AFTER_GRACE)) == (0, 0)
    assert aio(sync_pending_payments(world.runtime, AFTER_GRACE + dt.timedelta(minutes=2))) == (0, 1)

    localstripe = LocalStripe(stripe_port).start()
    try:
        assert aio(sync_pending_payments(world.runtime, AFTER_GRACE + dt.timedelta(hours=1))) == (1, 0)
        pushed = september_invoice(client, world)
        assert pushed["payment_state"] == "pushed" and pushed["last_push_error"] is None
        assert pushed["number"] == invoice["number"] and pushed["total"] == invoice["total"]
        remote = stripe_client(localstripe.url)
        account = client.get(f"/api/v1/tenants/{world.a.id}/billing", headers=finance(world)).json()
        invoices = remote.v1.invoices.list({"customer": account["customer_ref"]}).data
        assert [i.id for i in invoices] == [pushed["payment_ref"]]
        assert invoices[0].total == invoice["total"]
        # Pushing again (a retry after a lost answer) reuses the idempotency keys: still one invoice.
        assert aio(sync_pending_payments(world.runtime, AFTER_GRACE + dt.timedelta(hours=2))) == (0, 0)
        assert len(remote.v1.invoices.list({"customer": account["customer_ref"]}).data) == 1
    finally:
        localstripe.stop()


def test_idempotency_keys_replay_at_localstripe(localstripe: LocalStripe) -> None:
    """The harness itself: the same key answers the same object; other parameters are refused."""
    remote = stripe_client(localstripe.url)
    first = remote.v1.customers.create({"name": "A"}, {"idempotency_key": "same"})
    assert remote.v1.customers.create({"name": "A"}, {"idempotency_key": "same"}).id == first.id
    with pytest.raises(stripe.IdempotencyError):
        remote.v1.customers.create({"name": "B"}, {"idempotency_key": "same"})
    assert len(remote.v1.customers.list().data) == 1
