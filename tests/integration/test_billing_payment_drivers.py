"""The payments port's conformance suite, run against each driver (Stripe through localstripe over HTTP)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from billing.payments import payment_drivers
from billing.payments.port import (
    InvalidSignature,
    PayableInvoice,
    PayableLine,
    PaymentGateway,
    PaymentUnavailable,
    Pushed,
)
from kernel.errors import ConfigError
from tests.support.localstripe_server import LocalStripe, free_port

T = TypeVar("T")

INVOICE = PayableInvoice(
    id="inv_conformance",
    number="LIV-000042",
    tenant_id="ten_conformance",
    tenant_name="Conformance GmbH",
    email="billing@conformance.example",
    currency="eur",
    period_start=dt.datetime(2026, 9, 1, tzinfo=dt.UTC),
    period_end=dt.datetime(2026, 10, 1, tzinfo=dt.UTC),
    lines=[
        PayableLine(description="Growth plan", amount=4900),
        PayableLine(description="Events", amount=1234),
        PayableLine(description="Tax (20 %)", amount=1227),
    ],
    total=7361,
)


@pytest.fixture(scope="module")
def localstripe() -> Iterator[LocalStripe]:
    server = LocalStripe().start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "stripe"])
def driver_options(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    if request.param == "embedded":
        return "embedded", {}
    url = request.getfixturevalue("localstripe").url
    return "stripe", {
        "stripe_api_key": "sk_test_conformance",
        "stripe_webhook_secret": "whsec_c",
        "stripe_api_base": url,
    }


def _with_gateway(driver_options: tuple[str, dict[str, str]], work: Callable[[PaymentGateway], Awaitable[T]]) -> T:
    """Build the driver, use it and close it on one event loop (its HTTP connections belong to that loop)."""

    async def run() -> T:
        gateway = payment_drivers.create(driver_options[0], **driver_options[1])
        try:
            return await work(gateway)
        finally:
            await gateway.close()

    return asyncio.run(run())


def test_pushing_makes_an_invoice_payable_and_repeating_it_changes_nothing(
    driver_options: tuple[str, dict[str, str]],
) -> None:
    async def push_twice(gateway: PaymentGateway) -> tuple[Pushed, Pushed]:
        first = await gateway.push_invoice(INVOICE, None)
        return first, await gateway.push_invoice(INVOICE, first.customer_ref)

    first, again = _with_gateway(driver_options, push_twice)
    assert first.invoice_ref and first.customer_ref and first.status == "open"
    assert (again.invoice_ref, again.customer_ref) == (first.invoice_ref, first.customer_ref)


def test_unsigned_events_are_refused(driver_options: tuple[str, dict[str, str]]) -> None:
    async def verify(gateway: PaymentGateway) -> None:
        gateway.verify_event(b'{"id": "evt_1", "type": "invoice.paid"}', None, dt.datetime.now(dt.UTC))

    with pytest.raises(InvalidSignature):
        _with_gateway(driver_options, verify)


def test_an_unreachable_provider_is_reported_as_retryable() -> None:
    driver = payment_drivers.create(
        "stripe",
        stripe_api_key="sk_test_x",
        stripe_webhook_secret="whsec_x",
        stripe_api_base=f"http://127.0.0.1:{free_port()}",
    )

    async def push() -> None:
        try:
            await driver.push_invoice(INVOICE, None)
        finally:
            await driver.close()

    with pytest.raises(PaymentUnavailable):
        asyncio.run(push())


def test_an_unknown_driver_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="embedded, stripe"):
        payment_drivers.create("paypal")
