"""Billing's read models and requests (msgspec), shared by the API, exports and the CLI."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from billing.prices import TierLine

InvoiceStatus = Literal["draft", "finalised", "paid", "void", "uncollectible"]


class DraftLine(msgspec.Struct, kw_only=True):
    """A rated line: of a draft preview as it is (never stored, so no id), of an invoice with its id."""

    position: int
    kind: Literal["base_fee", "usage", "adjustment"]
    description: str
    meter: str | None
    usage_period_start: dt.datetime | None
    quantity: int
    included: int
    billable: int
    unit_amount: int | None
    unit_size: int
    amount: int
    tiers: list[TierLine]


class InvoiceLine(DraftLine, kw_only=True):
    id: str


class Invoice(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    number: str | None
    status: InvoiceStatus
    plan: str
    currency: str
    period_start: dt.datetime
    period_end: dt.datetime
    subtotal: int
    tax_rate_bp: int
    tax: int
    total: int
    credited: int
    finalize_after: dt.datetime
    created_at: dt.datetime
    finalized_at: dt.datetime | None
    paid_at: dt.datetime | None
    voided_at: dt.datetime | None
    uncollectible_at: dt.datetime | None
    payment_driver: str | None
    payment_ref: str | None
    payment_state: Literal["none", "pending", "pushed"]
    push_attempts: int
    last_push_error: str | None


class InvoiceDetail(Invoice, kw_only=True):
    lines: list[InvoiceLine]
    credit_notes: list[CreditNote]


class DraftPreview(msgspec.Struct, kw_only=True):
    """What the open period's invoice would say if it were rated now; nothing of it is stored."""

    tenant_id: str
    plan: str
    currency: str
    period_start: dt.datetime
    period_end: dt.datetime
    rated_at: dt.datetime
    seats: int
    subtotal: int
    tax_rate_bp: int
    tax: int
    total: int
    lines: list[DraftLine]


class InvoicePage(msgspec.Struct, kw_only=True):
    items: list[Invoice]
    next_cursor: str | None


class CreditNote(msgspec.Struct, kw_only=True):
    id: str
    invoice_id: str
    tenant_id: str
    number: str
    amount: int
    currency: str
    reason: str
    created_at: dt.datetime


class CreditNoteCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(ge=1)]
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=2000)]


class PaymentRecord(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A payment received outside the provider (bank transfer): marks the invoice paid."""

    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class PlanChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    plan: str
    # When the change takes effect (default: now); within the current period, the base fee is prorated.
    effective_at: dt.datetime | None = None
    # Start with the plan's trial (base fee and usage waived for its trial days).
    trial: bool = False


class Subscription(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    plan: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    trial_ends_at: dt.datetime | None


class AccountUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Basis points: 2000 is 20 %.
    tax_rate_bp: Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None = None
    billing_email: Annotated[str, msgspec.Meta(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None


class Account(msgspec.Struct, kw_only=True):
    tenant_id: str
    tax_rate_bp: int
    billing_email: str | None
    customer_ref: str | None
    plan: str
    subscriptions: list[Subscription]


class MeterUsage(msgspec.Struct, kw_only=True):
    tenant_id: str
    meter: str
    aggregation: str
    unit: str
    period_start: dt.datetime
    period_end: dt.datetime
    quantity: int
    included: int
    # The plan's ceiling for this meter, and what happens over it.
    quota: int | None = None
    quota_policy: str | None = None


class UsageSummary(msgspec.Struct, kw_only=True):
    items: list[MeterUsage]


class RevenueRow(msgspec.Struct, kw_only=True):
    currency: str
    invoices: int
    recurring: int
    usage: int
    adjustments: int
    subtotal: int
    tax: int
    total: int
    credited: int
    paid: int
    outstanding: int


class RevenueSummary(msgspec.Struct, kw_only=True):
    period_start: dt.datetime
    period_end: dt.datetime
    statuses: list[str]
    rows: list[RevenueRow]


class PlanView(msgspec.Struct, kw_only=True):
    key: str
    name: str
    currency: str
    base_fee: int
    trial_days: int
    components: list[dict[str, object]]
    quotas: list[dict[str, object]]


class WebhookReceipt(msgspec.Struct, kw_only=True):
    received: bool
    duplicate: bool


class CloseReport(msgspec.Struct, kw_only=True):
    drafts: int
    finalised: list[str]
    pushed: int
    push_failures: int
