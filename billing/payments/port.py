"""What billing asks of a payment provider, in billing's words; no vendor type crosses it."""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

import msgspec

from kernel.registry import DriverRegistry


class PayableLine(msgspec.Struct, frozen=True, kw_only=True):
    description: str
    amount: int


class PayableInvoice(msgspec.Struct, frozen=True, kw_only=True):
    """A finalised invoice as the provider needs it: amounts in minor units, tax as its own line."""

    id: str
    number: str
    tenant_id: str
    tenant_name: str
    email: str | None
    currency: str
    period_start: dt.datetime
    period_end: dt.datetime
    lines: list[PayableLine]
    total: int


class Pushed(msgspec.Struct, frozen=True, kw_only=True):
    customer_ref: str
    invoice_ref: str
    # The provider's status of the invoice once pushed (open, paid).
    status: str


class PaymentEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A verified provider event: ``kind`` is paid, payment_failed, voided, uncollectible or other."""

    id: str
    type: str
    kind: str
    invoice_ref: str | None
    invoice_id: str | None
    payload: dict[str, Any]


class PaymentUnavailable(Exception):
    """The provider could not be reached or failed on its side: try again later, nothing is lost."""


class PaymentRejected(Exception):
    """The provider refused the request as it stands (retrying it unchanged will not help)."""


class InvalidSignature(Exception):
    """A webhook's signature is missing, wrong, or its timestamp is outside the tolerance."""


class PaymentGateway(Protocol):
    name: str

    async def push_invoice(self, invoice: PayableInvoice, customer_ref: str | None) -> Pushed:
        """Make ``invoice`` payable at the provider; safe to call again after any failure (idempotent)."""
        ...

    def verify_event(self, payload: bytes, signature: str | None, now: dt.datetime) -> PaymentEvent:
        """Check a webhook's signature and timestamp, then read it; raises ``InvalidSignature``."""
        ...

    async def close(self) -> None: ...


payment_drivers: DriverRegistry[PaymentGateway] = DriverRegistry("payments", "LIVORA_BILLING_PAYMENTS_DRIVER")
