"""Billing tables (in the control plane's database, on the shared metadata)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base, UTCDateTime, utcnow
from kernel.tenancy import TenantScoped

INVOICE_STATUSES = ("draft", "finalised", "paid", "void", "uncollectible")
# Payment pushes: none (nothing to push), pending (to push, maybe after a failure), pushed.
PAYMENT_STATES = ("none", "pending", "pushed")

# Billing tables that hold no tenant's rows.
GLOBAL_TABLES = frozenset({"billing_sequences", "billing_payment_events"})


class UsageRecord(TenantScoped, Base):
    """A usage measurement as a cell reported it; the id is the cell's idempotency key."""

    __tablename__ = "billing_usage_records"
    __table_args__ = (Index("ix_billing_usage_records_period", "tenant_id", "metric", "period_start"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)  # type: ignore[assignment]
    cell_id: Mapped[str] = mapped_column(String(80))
    metric: Mapped[str] = mapped_column(String(60))
    timestamp: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    period_start: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
    key_count: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageKey(TenantScoped, Base):
    """A distinct key (a hashed user) of a unique-count metric in one period, and when it was last seen."""

    __tablename__ = "billing_usage_keys"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True, index=True)  # type: ignore[assignment]
    metric: Mapped[str] = mapped_column(String(60), primary_key=True)
    period_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class BillingAccount(TenantScoped, Base):
    """Who and how a tenant pays: tax rate, invoice mail, the payment provider's customer."""

    __tablename__ = "billing_accounts"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True, index=True)  # type: ignore[assignment]
    # Basis points: 2000 is 20 %.
    tax_rate_bp: Mapped[int] = mapped_column(Integer, default=0)
    billing_email: Mapped[str | None] = mapped_column(String(320))
    customer_ref: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Subscription(TenantScoped, Base):
    """A tenant on a plan from ``started_at`` until ``ended_at`` (NULL: still on it)."""

    __tablename__ = "billing_subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)  # type: ignore[assignment]
    plan: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    trial_ends_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Invoice(TenantScoped, Base):
    __tablename__ = "billing_invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "period_start", name="uq_billing_invoices_tenant_period"),
        CheckConstraint(f"status IN {INVOICE_STATUSES!r}", name="status"),
        CheckConstraint(f"payment_state IN {PAYMENT_STATES!r}", name="payment_state"),
        Index("ix_billing_invoices_period", "period_start", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)  # type: ignore[assignment]
    # Given at finalisation from a gap-free sequence; NULL while draft.
    number: Mapped[str | None] = mapped_column(String(40), unique=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    plan: Mapped[str] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    subtotal: Mapped[int] = mapped_column(BigInteger, default=0)
    tax_rate_bp: Mapped[int] = mapped_column(Integer, default=0)
    tax: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    credited: Mapped[int] = mapped_column(BigInteger, default=0)
    finalize_after: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    rated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finalized_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    paid_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    voided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    uncollectible_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    payment_driver: Mapped[str | None] = mapped_column(String(20))
    payment_ref: Mapped[str | None] = mapped_column(String(80), index=True)
    payment_state: Mapped[str] = mapped_column(String(20), default="none")
    push_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_push_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_push_error: Mapped[str | None] = mapped_column(Text)


class InvoiceLine(TenantScoped, Base):
    __tablename__ = "billing_invoice_lines"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)  # type: ignore[assignment]
    invoice_id: Mapped[str] = mapped_column(ForeignKey("billing_invoices.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(String(300))
    meter: Mapped[str | None] = mapped_column(String(60))
    usage_period_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
    included: Mapped[int] = mapped_column(BigInteger, default=0)
    billable: Mapped[int] = mapped_column(BigInteger, default=0)
    unit_amount: Mapped[int | None] = mapped_column(BigInteger)
    unit_size: Mapped[int] = mapped_column(BigInteger, default=1)
    amount: Mapped[int] = mapped_column(BigInteger)
    tiers: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class CreditNote(TenantScoped, Base):
    """A correction of a finalised invoice; the invoice itself never changes."""

    __tablename__ = "billing_credit_notes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)  # type: ignore[assignment]
    invoice_id: Mapped[str] = mapped_column(ForeignKey("billing_invoices.id"), index=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class QuotaWarning(TenantScoped, Base):
    """A warning sent at 80 % or 100 % of a quota; the key makes it once per period."""

    __tablename__ = "billing_quota_warnings"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True, index=True)  # type: ignore[assignment]
    period_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True)
    meter: Mapped[str] = mapped_column(String(60), primary_key=True)
    threshold: Mapped[int] = mapped_column(Integer, primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Sequence(Base):
    """Gap-free counters (invoice and credit-note numbers): taken inside the finalising transaction."""

    __tablename__ = "billing_sequences"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    last_value: Mapped[int] = mapped_column(BigInteger, default=0)


class PaymentEvent(Base):
    """A payment provider's webhook event: stored first (deduplicated by id), processed after."""

    __tablename__ = "billing_payment_events"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    provider: Mapped[str] = mapped_column(String(20))
    type: Mapped[str] = mapped_column(String(80))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
