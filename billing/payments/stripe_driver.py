"""The Stripe driver: a customer per tenant, invoice items on a one-off invoice, signed webhooks."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import stripe

from billing.payments.port import (
    InvalidSignature,
    PayableInvoice,
    PaymentEvent,
    PaymentRejected,
    PaymentUnavailable,
    Pushed,
    payment_drivers,
)

# Stripe's own default: a signed event older (or newer) than this is refused.
SIGNATURE_TOLERANCE_SECONDS = 300
_KINDS = {
    "invoice.paid": "paid",
    "invoice.payment_succeeded": "paid",
    "invoice.payment_failed": "payment_failed",
    "invoice.voided": "voided",
    "invoice.marked_uncollectible": "uncollectible",
}


class StripeGateway:
    name = "stripe"

    def __init__(self, api_key: str, webhook_secret: str, api_base: str = "", timeout: float = 20) -> None:
        self.webhook_secret = webhook_secret
        # NOTE: no retries inside the call: a failed push is retried later by the billing job,
        # with the same idempotency keys, so a slow Stripe never holds a request or a job.
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=stripe.HTTPXClient(timeout=timeout),
            max_network_retries=0,
        )

    async def _call(self, coroutine: Any) -> Any:
        try:
            return await coroutine
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise PaymentUnavailable(f"Stripe is unreachable: {exc.user_message or exc}") from None
        except stripe.StripeError as exc:
            if exc.http_status is None or exc.http_status >= 500:
                raise PaymentUnavailable(f"Stripe failed: {exc.user_message or exc}") from None
            raise PaymentRejected(
                f"Stripe refused the request ({exc.http_status}): {exc.user_message or exc}"
            ) from None

    async def push_invoice(self, invoice: PayableInvoice, customer_ref: str | None) -> Pushed:
        v1 = self.client.v1
        key = f"livora-{invoice.id}"
        if customer_ref is None:
            params: dict[str, Any] = {"name": invoice.tenant_name, "metadata": {"livora_tenant_id": invoice.tenant_id}}
            if invoice.email:
                params["email"] = invoice.email
            customer = await self._call(
                v1.customers.create_async(params, {"idempotency_key": f"livora-customer-{invoice.tenant_id}"})
            )
            customer_ref = customer.id
        created = await self._call(
            v1.invoices.create_async(
                {
                    "customer": customer_ref,
                    "collection_method": "charge_automatically",
                    "auto_advance": False,
                    "pending_invoice_items_behavior": "exclude",
                    "description": f"Livora invoice {invoice.number}",
                    "metadata": {"livora_invoice_id": invoice.id, "livora_invoice_number": invoice.number},
                },
                {"idempotency_key": f"{key}-invoice"},
            )
        )
        for index, line in enumerate(invoice.lines):
            await self._call(
                v1.invoice_items.create_async(
                    {
                        "customer": customer_ref,
                        "invoice": created.id,
                        "amount": line.amount,
                        "currency": invoice.currency,
                        "description": line.description,
                        "period": {
                            "start": int(invoice.period_start.timestamp()),
                            "end": int(invoice.period_end.timestamp()),
                        },
                    },
                    {"idempotency_key": f"{key}-line-{index}"},
                )
            )
        finalised = await self._call(
            v1.invoices.finalize_invoice_async(created.id, None, {"idempotency_key": f"{key}-finalize"})
        )
        if finalised.total != invoice.total:
            raise PaymentRejected(f"Stripe totals {finalised.total}, the invoice {invoice.total}")
        return Pushed(customer_ref=customer_ref, invoice_ref=created.id, status=finalised.status or "open")

    def verify_event(self, payload: bytes, signature: str | None, now: dt.datetime) -> PaymentEvent:
        if not self.webhook_secret:
            raise InvalidSignature("no webhook secret is configured")
        timestamp, candidates = _parse_signature(signature or "")
        if timestamp is None or not candidates:
            raise InvalidSignature("the Stripe-Signature header is missing or malformed")
        expected = hmac.new(self.webhook_secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
        if not any(hmac.compare_digest(expected.hexdigest(), c) for c in candidates):
            raise InvalidSignature("the signature does not match the payload")
        if abs(now.timestamp() - timestamp) > SIGNATURE_TOLERANCE_SECONDS:
            raise InvalidSignature("the signature's timestamp is outside the tolerance")
        try:
            event = json.loads(payload)
            obj = event["data"]["object"]
            event_id, event_type = str(event["id"]), str(event["type"])
        except (ValueError, KeyError, TypeError):
            raise InvalidSignature("the payload is not a Stripe event") from None
        is_invoice = isinstance(obj, dict) and obj.get("object") == "invoice"
        metadata = (obj.get("metadata") or {}) if is_invoice else {}
        return PaymentEvent(
            id=event_id,
            type=event_type,
            kind=_KINDS.get(event_type, "other") if is_invoice else "other",
            invoice_ref=obj.get("id") if is_invoice else None,
            invoice_id=metadata.get("livora_invoice_id"),
            payload=event,
        )

    async def close(self) -> None:
        await self.client._requestor._client.close_async()  # type: ignore[attr-defined]


def _parse_signature(header: str) -> tuple[int | None, list[str]]:
    timestamp: int | None = None
    signatures = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    return timestamp, signatures


@payment_drivers.register("stripe")
def _stripe(
    *, stripe_api_key: str = "", stripe_webhook_secret: str = "", stripe_api_base: str = "", **_: Any
) -> StripeGateway:
    return StripeGateway(stripe_api_key, stripe_webhook_secret, stripe_api_base)
