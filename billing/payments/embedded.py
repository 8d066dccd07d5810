"""The embedded driver: finalised invoices are payable locally; finance records payments through the API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from billing.payments.port import InvalidSignature, PayableInvoice, PaymentEvent, Pushed, payment_drivers


class EmbeddedGateway:
    name = "embedded"

    async def push_invoice(self, invoice: PayableInvoice, customer_ref: str | None) -> Pushed:
        return Pushed(
            customer_ref=customer_ref or f"local:{invoice.tenant_id}", invoice_ref=f"local:{invoice.id}", status="open"
        )

    def verify_event(self, payload: bytes, signature: str | None, now: dt.datetime) -> PaymentEvent:
        raise InvalidSignature("the embedded payments driver receives no webhooks")

    async def close(self) -> None:
        pass


@payment_drivers.register("embedded")
def _embedded(**_: Any) -> EmbeddedGateway:
    return EmbeddedGateway()
