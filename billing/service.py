"""Billing's logic: usage intake, drafts, finalisation, payments, corrections, reports. No HTTP here."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from sqlalchemy import Select, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billing import models as m
from billing import schemas
from billing.catalog import Catalog, Plan, default_catalog
from billing.payments.port import (
    InvalidSignature,
    PayableInvoice,
    PayableLine,
    PaymentGateway,
    PaymentRejected,
    PaymentUnavailable,
)
from billing.rating import (
    LineDraft,
    Segment,
    adjustment_line,
    base_fee_lines,
    included_quantity,
    period_of,
    previous_period,
    tax_of,
    usage_line,
)
from billing.render import render_invoice_html
from data_plane.contract.schemas import CONTRACT_VERSION, UsageReceipt, UsageReport
from kernel.db import new_id, utcnow
from kernel.errors import Conflict, NotAuthenticated, NotFound, Unprocessable, ValidationFailed
from kernel.logging import get_logger
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.tenancy import dangerously_unscoped, tenant_scope

log = get_logger("livora.billing")

QUOTA_THRESHOLDS = (80, 100)
QUOTA_CACHE_SECONDS = 3.0
_quota_cache: dict[tuple[Any, ...], tuple[float, dict[str, list[QuotaState]]]] = {}
MAX_RECORDS_PER_REPORT = 5_000
MAX_KEYS_PER_RECORD = 100_000


@dataclass(frozen=True)
class TenantInfo:
    id: str
    name: str
    plan: str
    status: str
    created_at: dt.datetime


class Directory(Protocol):
    """What billing needs from the platform around it (tenants, people, audit, mail)."""

    async def tenant(self, tenant_id: str) -> TenantInfo | None: ...

    async def tenants(self) -> list[TenantInfo]: ...

    async def seats(self, tenant_id: str) -> int: ...

    async def set_plan(self, tenant_id: str, plan: str) -> None: ...

    def audit(
        self, action: str, *, tenant_id: str | None, target_type: str, target_id: str, details: dict[str, Any]
    ) -> None: ...

    async def notify_owners(self, tenant_id: str, subject: str, text: str) -> None: ...


@dataclass(frozen=True)
class BillingConfig:
    grace_seconds: int = 3 * 24 * 3600
    invoice_prefix: str = "LIV-"
    credit_note_prefix: str = "LIVCN-"
    retry_base_seconds: int = 60
    retry_max_seconds: int = 6 * 3600


@dataclass(frozen=True)
class QuotaState:
    """A tenant's ceiling on one meter this period, for the cell config."""

    meter: str
    limit: int
    policy: str
    used: int
    exceeded_until: dt.datetime | None


def _insert(db: AsyncSession, table: Any) -> Any:
    return (postgresql.insert if db.bind.dialect.name == "postgresql" else sqlite.insert)(table)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class BillingService:
    def __init__(
        self,
        db: AsyncSession,
        directory: Directory,
        gateway: PaymentGateway,
        config: BillingConfig | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.db = db
        self.directory = directory
        self.gateway = gateway
        self.config = config or BillingConfig()
        self.catalog = catalog or default_catalog()

    # --- plans -------------------------------------------------------------------------------

    def plan(self, key: str) -> Plan:
        plan = self.catalog.plan(key)
        if plan is None:
            valid = ", ".join(p.key for p in self.catalog.plans)
            raise ValidationFailed(f"No plan {key!r}; plans are: {valid}.", code="unknown_plan")
        return plan

    # --- usage intake -------------------------------------------------------------------------

    async def ingest_usage(self, report: UsageReport, now: dt.datetime | None = None) -> UsageReceipt:
        """Store a cell's report; a record id seen before is counted once, whatever the report."""
        now = now or utcnow()
        if report.contract != CONTRACT_VERSION:
            raise Unprocessable(f"Contract {report.contract} is not {CONTRACT_VERSION}.", code="unsupported_contract")
        if len(report.records) > MAX_RECORDS_PER_REPORT:
            raise ValidationFailed(f"At most {MAX_RECORDS_PER_REPORT} records per report.", code="too_many_records")
        unique: dict[str, Any] = {}
        for record in report.records:
            if not record.id or len(record.id) > 200:
                raise ValidationFailed("Each record needs an id of 1 to 200 characters.", code="invalid_record")
            if record.value < 0 or len(record.keys) > MAX_KEYS_PER_RECORD or len(record.metric) > 60:
                raise ValidationFailed(f"Record {record.id} is not a valid measurement.", code="invalid_record")
            if record.metric == "seats":
                raise ValidationFailed("Seats are counted by the control plane, not reported.", code="invalid_record")
            unique.setdefault(record.id, record)
        tenants = {r.tenant_id for r in unique.values()}
        known = {t for t in tenants if await self.directory.tenant(t) is not None}
        if unknown := sorted(tenants - known):
            raise Unprocessable(f"Unknown tenants: {', '.join(unknown[:5])}.", code="unknown_tenant")
        stored_ids: set[str] = set()
        with dangerously_unscoped():  # a cell's report spans its tenants
            if unique:
                rows = [
                    {
                        "id": r.id,
                        "tenant_id": r.tenant_id,
                        "cell_id": report.cell_id[:80],
                        "metric": r.metric,
                        "timestamp": _utc(r.timestamp),
                        "period_start": period_of(r.timestamp)[0],
                        "value": r.value,
                        "key_count": len(r.keys),
                        "received_at": now,
                    }
                    for r in unique.values()
                ]
                # One cached statement, many parameter sets: SQLAlchemy batches them ("insertmanyvalues").
                statement = _insert(self.db, m.UsageRecord).on_conflict_do_nothing().returning(m.UsageRecord.id)
                stored_ids = set((await self.db.execute(statement, rows)).scalars())
            for record in (unique[i] for i in stored_ids):
                if record.keys:
                    await self._upsert_keys(record.tenant_id, record.metric, _utc(record.timestamp), record.keys, now)
        await self.db.commit()
        for tenant_id in sorted({unique[i].tenant_id for i in stored_ids}):
            try:
                await self.check_quotas(tenant_id, now)
            except Exception:  # the usage is stored; a warning that failed must not make the cell resend it
                await self.db.rollback()
                log.exception("quota_check_failed", tenant_id=tenant_id)
        return UsageReceipt(stored=len(stored_ids), duplicates=len(report.records) - len(stored_ids))

    async def _upsert_keys(
        self, tenant_id: str, metric: str, seen: dt.datetime, keys: list[str], now: dt.datetime
    ) -> None:
        period = period_of(seen)[0]
        rows = [
            {
                "tenant_id": tenant_id,
                "metric": metric,
                "period_start": period,
                "key": k[:128],
                "last_seen": seen,
                "received_at": now,
            }
            for k in dict.fromkeys(keys)
        ]
        statement = _insert(self.db, m.UsageKey)
        greatest = func.greatest if self.db.bind.dialect.name == "postgresql" else func.max
        statement = statement.on_conflict_do_update(
            index_elements=["tenant_id", "metric", "period_start", "key"],
            set_={"last_seen": greatest(m.UsageKey.last_seen, statement.excluded.last_seen)},
        )
        await self.db.execute(statement, rows)

    async def record_seats(self, tenant_id: str, now: dt.datetime) -> None:
        """Snapshot the tenant's seats (its members) for the hour: one record per hour, idempotent."""
        hour = now.replace(minute=0, second=0, microsecond=0)
        seats = await self.directory.seats(tenant_id)
        with tenant_scope(tenant_id):
            statement = _insert(self.db, m.UsageRecord).values(
                id=f"seats:{tenant_id}:{hour:%Y%m%dT%H}",
                tenant_id=tenant_id,
                cell_id="control-plane",
                metric="seats",
                timestamp=hour,
                period_start=period_of(hour)[0],
                value=seats,
                key_count=0,
                received_at=now,
            )
            await self.db.execute(
                statement.on_conflict_do_update(
                    index_elements=["id"], set_={"value": func.max(m.UsageRecord.value, seats)}
                )
                if self.db.bind.dialect.name == "sqlite"
                else statement.on_conflict_do_update(
                    index_elements=["id"], set_={"value": func.greatest(m.UsageRecord.value, seats)}
                )
            )

    async def snapshot_seats(self, now: dt.datetime) -> int:
        """Record every billable tenant's seats for this hour (the seats meter keeps the period's peak)."""
        tenants = [t for t in await self.directory.tenants() if t.status != "deleted"]
        for tenant in tenants:
            await self.record_seats(tenant.id, now)
        await self.db.commit()
        return len(tenants)

    # --- meters -------------------------------------------------------------------------------

    async def quantity(
        self, tenant_id: str, meter_key: str, period_start: dt.datetime, since: dt.datetime | None = None
    ) -> int:
        """The meter's aggregate over the period (records at or after ``since`` only: trials)."""
        meter = self.catalog.meter(meter_key)
        records = m.UsageRecord
        where = [records.tenant_id == tenant_id, records.metric == meter.metric, records.period_start == period_start]
        if since is not None:
            where.append(records.timestamp >= since)
        with tenant_scope(tenant_id):
            if meter.aggregation == "unique_count":
                keys = m.UsageKey
                query = (
                    select(func.count())
                    .select_from(keys)
                    .where(keys.tenant_id == tenant_id, keys.metric == meter.metric, keys.period_start == period_start)
                )
                if since is not None:
                    query = query.where(keys.last_seen >= since)
                return int(await self.db.scalar(query) or 0)
            if meter.aggregation == "latest":
                query = (
                    select(records.value)
                    .where(*where)
                    .order_by(records.timestamp.desc(), records.received_at.desc(), records.id.desc())
                    .limit(1)
                )
                return int(await self.db.scalar(query) or 0)
            aggregate = {"count": func.count(), "sum": func.sum(records.value), "max": func.max(records.value)}
            return int(await self.db.scalar(select(aggregate[meter.aggregation]).where(*where)) or 0)

    # --- subscriptions ------------------------------------------------------------------------

    async def subscriptions(self, tenant_id: str) -> list[m.Subscription]:
        """The tenant's plan timeline; the first call starts it from the tenant's plan and creation."""
        with tenant_scope(tenant_id):
            rows = list((await self.db.scalars(select(m.Subscription).order_by(m.Subscription.started_at))).all())
            if rows:
                return rows
            tenant = await self.directory.tenant(tenant_id)
            if tenant is None:
                raise NotFound(f"No tenant {tenant_id}.", code="tenant_not_found")
            # One deterministic id: concurrent first calls (usage intake, a read) cannot start two timelines.
            statement = _insert(self.db, m.Subscription).values(
                id=f"sub_{tenant_id.removeprefix('ten_')}"[:40],
                tenant_id=tenant_id,
                plan=tenant.plan,
                started_at=tenant.created_at,
                created_at=utcnow(),
            )
            await self.db.execute(statement.on_conflict_do_nothing())
            await self.db.commit()
            return list((await self.db.scalars(select(m.Subscription).order_by(m.Subscription.started_at))).all())

    async def segments(self, tenant_id: str, start: dt.datetime, end: dt.datetime) -> list[Segment]:
        segments = []
        for sub in await self.subscriptions(tenant_id):
            seg_end = sub.ended_at or end
            if seg_end > start and sub.started_at < end:
                segments.append(
                    Segment(self.plan(sub.plan), max(sub.started_at, start), min(seg_end, end), sub.trial_ends_at)
                )
        return segments

    async def change_plan(
        self, tenant_id: str, change: schemas.PlanChange, now: dt.datetime | None = None
    ) -> schemas.Account:
        """Move the tenant to another plan from ``effective_at``; the base fee is prorated per plan."""
        now = now or utcnow()
        plan = self.plan(change.plan)
        at = _utc(change.effective_at) if change.effective_at else now
        period_start = period_of(now)[0]
        if at < period_start:
            raise Unprocessable("A plan change cannot take effect before the current period.", code="change_in_past")
        current = (await self.subscriptions(tenant_id))[-1]
        if at < current.started_at:
            raise Unprocessable(
                "A plan change cannot take effect before the current plan started.", code="change_in_past"
            )
        if current.plan == plan.key and not change.trial:
            raise Conflict(f"The tenant is already on {plan.key}.", code="plan_unchanged")
        with tenant_scope(tenant_id):
            current.ended_at = at
            trial_end = at + dt.timedelta(days=plan.trial_days) if change.trial and plan.trial_days else None
            self.db.add(
                m.Subscription(
                    id=new_id("sub"), tenant_id=tenant_id, plan=plan.key, started_at=at, trial_ends_at=trial_end
                )
            )
            await self.directory.set_plan(tenant_id, plan.key)
            self.directory.audit(
                "subscription.changed",
                tenant_id=tenant_id,
                target_type="tenant",
                target_id=tenant_id,
                details={
                    "from": current.plan,
                    "to": plan.key,
                    "effective_at": at.isoformat(),
                    "trial_ends_at": trial_end.isoformat() if trial_end else None,
                },
            )
            await self.db.commit()
        return await self.account(tenant_id)

    # --- accounts -----------------------------------------------------------------------------

    async def _account_row(self, tenant_id: str) -> m.BillingAccount:
        with tenant_scope(tenant_id):
            row = await self.db.get(m.BillingAccount, tenant_id)
            if row is None:
                row = m.BillingAccount(tenant_id=tenant_id, tax_rate_bp=0)
                self.db.add(row)
                await self.db.flush()
            return row

    async def account(self, tenant_id: str) -> schemas.Account:
        subs = await self.subscriptions(tenant_id)
        row = await self._account_row(tenant_id)
        await self.db.commit()
        return schemas.Account(
            tenant_id=tenant_id,
            tax_rate_bp=row.tax_rate_bp,
            billing_email=row.billing_email,
            customer_ref=row.customer_ref,
            plan=subs[-1].plan,
            subscriptions=[msgspec.convert(s, schemas.Subscription, from_attributes=True) for s in subs],
        )

    async def update_account(self, tenant_id: str, change: schemas.AccountUpdate) -> schemas.Account:
        """Set the tax rate (applies to invoices finalised from now on) or the invoice mail address."""
        row = await self._account_row(tenant_id)
        with tenant_scope(tenant_id):
            details: dict[str, Any] = {}
            if change.tax_rate_bp is not None:
                details["tax_rate_bp"] = [row.tax_rate_bp, change.tax_rate_bp]
                row.tax_rate_bp = change.tax_rate_bp
            if change.billing_email is not None:
                details["billing_email"] = change.billing_email
                row.billing_email = change.billing_email
            self.directory.audit(
                "billing_account.updated",
                tenant_id=tenant_id,
                target_type="tenant",
                target_id=tenant_id,
                details=details,
            )
            await self.db.commit()
        return await self.account(tenant_id)

    # --- drafts and rating --------------------------------------------------------------------

    async def _lines_for(
        self, tenant_id: str, start: dt.datetime, end: dt.datetime, invoice_id: str, seats_now: int | None = None
    ) -> tuple[str, str, list[LineDraft]]:
        segments = await self.segments(tenant_id, start, end)
        if not segments:
            raise Unprocessable(f"Tenant {tenant_id} had no plan in this period.", code="no_subscription")
        plan = segments[-1].plan
        lines = base_fee_lines(segments, start, end)
        trial_end = segments[-1].trial_end if segments[-1].trial_end and segments[-1].trial_end > start else None
        for component in plan.components:
            used = await self.quantity(tenant_id, component.meter, start, since=trial_end)
            if seats_now is not None and self.catalog.meter(component.meter).metric == "seats":
                # A preview counts today's seats as the hourly snapshot would, without recording them.
                used = max(used, seats_now)
            included = included_quantity(segments, component.meter, start, end)
            line = usage_line(self.catalog, plan, component.meter, used, included, start)
            if line is not None:
                lines.append(line)
        lines += await self._adjustments(tenant_id, start, invoice_id)
        return plan.key, plan.currency, lines

    async def _adjustments(self, tenant_id: str, before: dt.datetime, invoice_id: str) -> list[LineDraft]:
        """Late usage of finalised periods: what it adds at that period's prices, not yet billed."""
        lines: list[LineDraft] = []
        with tenant_scope(tenant_id):
            finalised = (
                await self.db.scalars(
                    select(m.Invoice)
                    .where(
                        m.Invoice.period_start < before,
                        m.Invoice.status.in_(("finalised", "paid", "uncollectible")),
                    )
                    .order_by(m.Invoice.period_start)
                )
            ).all()
            for invoice in finalised:
                assert invoice.finalized_at is not None
                late = await self.db.scalar(
                    select(func.count())
                    .select_from(m.UsageRecord)
                    .where(
                        m.UsageRecord.period_start == invoice.period_start,
                        m.UsageRecord.received_at > invoice.finalized_at,
                    )
                )
                if not late:
                    continue
                billed_rows = (
                    await self.db.execute(
                        select(m.InvoiceLine.meter, m.InvoiceLine.quantity, m.InvoiceLine.included, m.InvoiceLine.kind)
                        .join(m.Invoice, m.Invoice.id == m.InvoiceLine.invoice_id)
                        .where(
                            m.InvoiceLine.usage_period_start == invoice.period_start,
                            m.InvoiceLine.meter.is_not(None),
                            m.Invoice.status.in_(("finalised", "paid", "uncollectible")),
                            m.Invoice.id != invoice_id,
                        )
                    )
                ).all()
                billed: dict[str, int] = {}
                included: dict[str, int] = {}
                for meter, quantity, incl, kind in billed_rows:
                    billed[meter] = billed.get(meter, 0) + quantity
                    if kind == "usage":
                        included[meter] = incl
                plan = self.plan(invoice.plan)
                segments = await self.segments(tenant_id, invoice.period_start, invoice.period_end)
                trial_end = segments[-1].trial_end if segments and segments[-1].trial_end else None
                for component in plan.components:
                    now_q = await self.quantity(tenant_id, component.meter, invoice.period_start, since=trial_end)
                    incl = included.get(
                        component.meter,
                        included_quantity(segments, component.meter, invoice.period_start, invoice.period_end),
                    )
                    line = adjustment_line(
                        self.catalog,
                        plan,
                        component.meter,
                        billed.get(component.meter, 0),
                        now_q,
                        incl,
                        invoice.period_start,
                    )
                    if line is not None:
                        lines.append(line)
        return lines

    async def ensure_draft(self, tenant_id: str, period_start: dt.datetime, now: dt.datetime) -> m.Invoice:
        """The period's invoice, created as a draft if missing; a draft is re-rated from the usage stored now."""
        start, end = period_of(period_start)
        with tenant_scope(tenant_id):
            invoice = await self.db.scalar(select(m.Invoice).where(m.Invoice.period_start == start))
            if invoice is not None and invoice.status != "draft":
                return invoice
            if invoice is None:
                invoice = m.Invoice(
                    id=new_id("inv"),
                    tenant_id=tenant_id,
                    status="draft",
                    plan="",
                    currency="eur",
                    period_start=start,
                    period_end=end,
                    finalize_after=end + dt.timedelta(seconds=self.config.grace_seconds),
                    payment_state="none",
                )
                self.db.add(invoice)
                await self.db.flush()
            await self._rate(invoice, now)
            return invoice

    async def draft(
        self, tenant_id: str, period_start: dt.datetime, now: dt.datetime | None = None
    ) -> schemas.InvoiceDetail:
        """Draft (or re-rate) the tenant's invoice of the period holding ``period_start``, and commit it."""
        invoice = await self.ensure_draft(tenant_id, period_start, now or utcnow())
        await self.db.commit()
        return await self.invoice(invoice.id)

    async def _rate(self, invoice: m.Invoice, now: dt.datetime) -> None:
        if invoice.status != "draft":
            raise Conflict(
                f"Invoice {invoice.number} is {invoice.status}: it can no longer change.", code="invoice_immutable"
            )
        tenant_id = invoice.tenant_id
        if now < invoice.period_end:
            await self.record_seats(tenant_id, now)
        elif not await self.quantity(tenant_id, "seats", invoice.period_start):
            await self.record_seats(tenant_id, invoice.period_end - dt.timedelta(seconds=1))
        plan, currency, drafts = await self._lines_for(tenant_id, invoice.period_start, invoice.period_end, invoice.id)
        account = await self._account_row(tenant_id)
        with tenant_scope(tenant_id):
            await self.db.execute(delete(m.InvoiceLine).where(m.InvoiceLine.invoice_id == invoice.id))
            for position, line in enumerate(drafts):
                self.db.add(
                    m.InvoiceLine(
                        id=new_id("inl"),
                        tenant_id=tenant_id,
                        invoice_id=invoice.id,
                        position=position,
                        kind=line.kind,
                        description=line.description,
                        meter=line.meter,
                        usage_period_start=line.usage_period_start,
                        quantity=line.quantity,
                        included=line.included,
                        billable=line.billable,
                        unit_amount=line.unit_amount,
                        unit_size=line.unit_size,
                        amount=line.amount,
                        tiers=msgspec.to_builtins(line.tiers),
                    )
                )
            invoice.plan, invoice.currency = plan, currency
            invoice.subtotal = sum(line.amount for line in drafts)
            invoice.tax_rate_bp = account.tax_rate_bp
            invoice.tax = tax_of(invoice.subtotal, account.tax_rate_bp)
            invoice.total = invoice.subtotal + invoice.tax
            invoice.rated_at = now
            await self.db.flush()

    async def preview(self, tenant_id: str, now: dt.datetime | None = None) -> schemas.DraftPreview:
        """The open period's invoice as it would be rated now: its lines and totals, nothing stored.

        Drafts only exist once a period has ended; this rates the usage received so far the way
        ``_rate`` does (today's seats included), and writes no invoice, line or seat snapshot.
        """
        now = now or utcnow()
        start, end = period_of(now)
        if await self.directory.tenant(tenant_id) is None:
            raise NotFound(f"No tenant {tenant_id}.", code="tenant_not_found")
        seats = await self.directory.seats(tenant_id)
        plan, currency, drafts = await self._lines_for(tenant_id, start, end, "", seats_now=seats)
        with tenant_scope(tenant_id):
            account = await self.db.get(m.BillingAccount, tenant_id)
        tax_rate = account.tax_rate_bp if account else 0
        subtotal = sum(line.amount for line in drafts)
        tax = tax_of(subtotal, tax_rate)
        # Reading may have started the tenant's plan timeline (``subscriptions``); that is all it keeps.
        await self.db.commit()
        return schemas.DraftPreview(
            tenant_id=tenant_id,
            plan=plan,
            currency=currency,
            period_start=start,
            period_end=end,
            rated_at=now,
            seats=seats,
            subtotal=subtotal,
            tax_rate_bp=tax_rate,
            tax=tax,
            total=subtotal + tax,
            lines=[
                schemas.DraftLine(
                    position=position,
                    kind=line.kind,  # type: ignore[arg-type]
                    description=line.description,
                    meter=line.meter,
                    usage_period_start=line.usage_period_start,
                    quantity=line.quantity,
                    included=line.included,
                    billable=line.billable,
                    unit_amount=line.unit_amount,
                    unit_size=line.unit_size,
                    amount=line.amount,
                    tiers=list(line.tiers),
                )
                for position, line in enumerate(drafts)
            ],
        )

    async def refresh_draft(self, invoice_id: str, now: dt.datetime | None = None) -> schemas.InvoiceDetail:
        """Re-rate a draft from the usage stored now (late usage is taken until finalisation)."""
        invoice = await self._invoice(invoice_id)
        with tenant_scope(invoice.tenant_id):
            await self._rate(invoice, now or utcnow())
            await self.db.commit()
        return await self.invoice(invoice_id)

    async def close_periods(self, now: dt.datetime) -> int:
        """Draft the invoice of the period that ended last for every tenant billed then; returns drafts created."""
        start, end = previous_period(period_of(now)[0])
        created = 0
        for tenant in await self.directory.tenants():
            if tenant.created_at >= end:
                continue
            with tenant_scope(tenant.id):
                status = await self.db.scalar(select(m.Invoice.status).where(m.Invoice.period_start == start))
            if status is not None and status != "draft":
                continue
            try:
                # A draft is re-rated on every run: late usage lands on it until it is finalised.
                await self.ensure_draft(tenant.id, start, now)
                await self.db.commit()
                created += status is None
            except Exception:
                await self.db.rollback()
                log.exception("billing_draft_failed", tenant_id=tenant.id, period=start.isoformat())
        return created

    # --- finalisation -------------------------------------------------------------------------

    async def _next_number(self, name: str, prefix: str) -> str:
        # NOTE: the increment runs in the caller's transaction: PostgreSQL's row lock (and SQLite's
        # single writer) serialise finalisations, and a rollback returns the number, so no gaps.
        statement = _insert(self.db, m.Sequence).values(name=name, last_value=1)
        statement = statement.on_conflict_do_update(
            index_elements=["name"], set_={"last_value": m.Sequence.last_value + 1}
        ).returning(m.Sequence.last_value)
        value = (await self.db.execute(statement)).scalar_one()
        return f"{prefix}{value:06d}"

    async def finalize(
        self, invoice_id: str, now: dt.datetime | None = None, *, push: bool = True
    ) -> schemas.InvoiceDetail:
        """Re-rate a draft one last time, number it, and freeze it; then make it payable."""
        now = now or utcnow()
        invoice = await self._invoice(invoice_id)
        if now < invoice.period_end:
            raise Conflict("The period has not ended yet.", code="period_not_ended")
        with tenant_scope(invoice.tenant_id):
            await self._rate(invoice, now)
            with dangerously_unscoped():
                invoice.number = await self._next_number("invoice", self.config.invoice_prefix)
            invoice.status = "finalised"
            invoice.finalized_at = now
            if invoice.total > 0:
                invoice.payment_state, invoice.payment_driver, invoice.next_push_at = "pending", self.gateway.name, now
            self.directory.audit(
                "invoice.finalised",
                tenant_id=invoice.tenant_id,
                target_type="invoice",
                target_id=invoice.id,
                details={"number": invoice.number, "total": invoice.total, "currency": invoice.currency},
            )
            await self.db.commit()
        if push and invoice.payment_state == "pending":
            await self.push(invoice.id, now)
        return await self.invoice(invoice_id)

    async def finalize_due(self, now: dt.datetime) -> list[str]:
        """Finalise every draft whose grace period is over; returns their numbers."""
        with dangerously_unscoped():
            due = (
                await self.db.scalars(
                    select(m.Invoice.id)
                    .where(m.Invoice.status == "draft", m.Invoice.finalize_after <= now)
                    .order_by(m.Invoice.id)
                )
            ).all()
        numbers = []
        for invoice_id in due:
            try:
                numbers.append((await self.finalize(invoice_id, now)).number or "")
            except Exception:
                await self.db.rollback()
                log.exception("billing_finalise_failed", invoice_id=invoice_id)
        return numbers

    # --- payments -----------------------------------------------------------------------------

    async def push(self, invoice_id: str, now: dt.datetime | None = None) -> bool:
        """Make a finalised invoice payable at the provider; on failure it stays pending and is retried later."""
        now = now or utcnow()
        invoice = await self._invoice(invoice_id)
        if invoice.payment_state != "pending":
            return invoice.payment_state == "pushed"
        tenant = await self.directory.tenant(invoice.tenant_id)
        account = await self._account_row(invoice.tenant_id)
        with tenant_scope(invoice.tenant_id):
            lines = (
                await self.db.scalars(
                    select(m.InvoiceLine).where(m.InvoiceLine.invoice_id == invoice.id).order_by(m.InvoiceLine.position)
                )
            ).all()
        payable_lines = [PayableLine(description=line.description, amount=line.amount) for line in lines if line.amount]
        if invoice.tax:
            payable_lines.append(PayableLine(description=f"Tax ({invoice.tax_rate_bp / 100:g} %)", amount=invoice.tax))
        payable = PayableInvoice(
            id=invoice.id,
            number=invoice.number or "",
            tenant_id=invoice.tenant_id,
            tenant_name=tenant.name if tenant else invoice.tenant_id,
            email=account.billing_email,
            currency=invoice.currency,
            period_start=invoice.period_start,
            period_end=invoice.period_end,
            lines=payable_lines,
            total=invoice.total,
        )
        try:
            pushed = await self.gateway.push_invoice(payable, account.customer_ref)
        except (PaymentUnavailable, PaymentRejected) as exc:
            with tenant_scope(invoice.tenant_id):
                invoice.push_attempts += 1
                delay = min(
                    self.config.retry_max_seconds,
                    self.config.retry_base_seconds * 2 ** min(invoice.push_attempts - 1, 16),
                )
                invoice.next_push_at = now + dt.timedelta(seconds=delay)
                invoice.last_push_error = str(exc)[:2000]
                await self.db.commit()
            log.warning("billing_push_failed", invoice_id=invoice.id, attempts=invoice.push_attempts, error=str(exc))
            return False
        with tenant_scope(invoice.tenant_id):
            account.customer_ref = pushed.customer_ref
            invoice.push_attempts += 1
            invoice.payment_state, invoice.payment_ref = "pushed", pushed.invoice_ref
            invoice.next_push_at, invoice.last_push_error = None, None
            if pushed.status == "paid" and invoice.status == "finalised":
                invoice.status, invoice.paid_at = "paid", now
            await self.db.commit()
        return True

    async def sync_pending(self, now: dt.datetime | None = None) -> tuple[int, int]:
        """Retry every push that is due; returns (pushed, still failing)."""
        now = now or utcnow()
        with dangerously_unscoped():
            due = (
                await self.db.scalars(
                    select(m.Invoice.id)
                    .where(m.Invoice.payment_state == "pending", m.Invoice.next_push_at <= now)
                    .order_by(m.Invoice.next_push_at)
                )
            ).all()
        ok = failed = 0
        for invoice_id in due:
            if await self.push(invoice_id, now):
                ok += 1
            else:
                failed += 1
        return ok, failed

    async def receive_webhook(
        self, payload: bytes, signature: str | None, now: dt.datetime | None = None
    ) -> schemas.WebhookReceipt:
        """Verify, store (once per event id), then process a provider event."""
        now = now or utcnow()
        try:
            event = self.gateway.verify_event(payload, signature, now)
        except InvalidSignature as exc:
            raise NotAuthenticated(
                f"The webhook signature was refused: {exc}.", code="invalid_webhook_signature"
            ) from None
        with dangerously_unscoped():
            statement = (
                _insert(self.db, m.PaymentEvent)
                .values(
                    id=event.id, provider=self.gateway.name, type=event.type, payload=event.payload, received_at=now
                )
                .on_conflict_do_nothing()
            )
            stored = (await self.db.execute(statement.returning(m.PaymentEvent.id))).scalar()
            await self.db.commit()
        if stored is None:
            return schemas.WebhookReceipt(received=True, duplicate=True)
        await self.process_event(event.id, now)
        return schemas.WebhookReceipt(received=True, duplicate=False)

    async def process_event(self, event_id: str, now: dt.datetime) -> None:
        """Apply a stored event once (also run again for stored events whose processing failed)."""
        with dangerously_unscoped():
            row = await self.db.get(m.PaymentEvent, event_id)
            if row is None or row.processed_at is not None:
                return
            try:
                obj = row.payload.get("data", {}).get("object", {})
                kind = (
                    {
                        "invoice.paid": "paid",
                        "invoice.payment_succeeded": "paid",
                        "invoice.voided": "voided",
                        "invoice.marked_uncollectible": "uncollectible",
                    }.get(row.type)
                    if obj.get("object") == "invoice"
                    else None
                )
                invoice = None
                if kind:
                    invoice_id = (obj.get("metadata") or {}).get("livora_invoice_id")
                    query = select(m.Invoice).where(
                        (m.Invoice.id == invoice_id) if invoice_id else (m.Invoice.payment_ref == obj.get("id"))
                    )
                    invoice = await self.db.scalar(query)
                to = {"paid": "paid", "voided": "void", "uncollectible": "uncollectible"}.get(kind or "")
                if invoice is not None and to and await self._move(invoice, to, ("finalised",), now):
                    self.directory.audit(
                        f"invoice.{to}",
                        tenant_id=invoice.tenant_id,
                        target_type="invoice",
                        target_id=invoice.id,
                        details={"event_id": row.id, "source": self.gateway.name},
                    )
                row.processed_at = now
                await self.db.commit()
            except Exception as exc:
                await self.db.rollback()
                row = await self.db.get(m.PaymentEvent, event_id)
                if row is not None:
                    row.error = str(exc)[:2000]
                    await self.db.commit()
                log.exception("billing_event_failed", event_id=event_id)

    async def process_stored_events(self, now: dt.datetime | None = None) -> int:
        """Process events stored but not processed (a crash between storing and processing)."""
        with dangerously_unscoped():
            ids = (await self.db.scalars(select(m.PaymentEvent.id).where(m.PaymentEvent.processed_at.is_(None)))).all()
        for event_id in ids:
            await self.process_event(event_id, now or utcnow())
        return len(ids)

    # --- status changes and corrections ----------------------------------------------------------

    async def _move(self, invoice: m.Invoice, to: str, allowed: tuple[str, ...], now: dt.datetime) -> bool:
        """Change the status only if it is still one of ``allowed`` (one atomic UPDATE: concurrent
        webhooks and API calls cannot both apply); True when this call made the change."""
        stamp = {"paid": "paid_at", "void": "voided_at", "uncollectible": "uncollectible_at"}[to]
        values: dict[str, Any] = {"status": to, stamp: now, "updated_at": now}
        if to == "void":
            values["payment_state"] = case(
                (m.Invoice.payment_state == "pending", "none"), else_=m.Invoice.payment_state
            )
        result = await self.db.execute(
            update(m.Invoice)
            .where(m.Invoice.id == invoice.id, m.Invoice.status.in_(allowed))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        await self.db.refresh(invoice)
        return bool(result.rowcount)

    async def _transition(
        self, invoice_id: str, to: str, allowed: tuple[str, ...], details: dict[str, Any], now: dt.datetime
    ) -> schemas.InvoiceDetail:
        invoice = await self._invoice(invoice_id)
        with tenant_scope(invoice.tenant_id):
            if not await self._move(invoice, to, allowed, now):
                status = invoice.status
                await self.db.rollback()
                raise Conflict(f"A {status} invoice cannot become {to}.", code="invalid_invoice_transition")
            self.directory.audit(
                f"invoice.{to}",
                tenant_id=invoice.tenant_id,
                target_type="invoice",
                target_id=invoice.id,
                details={"number": invoice.number, **details},
            )
            await self.db.commit()
        return await self.invoice(invoice_id)

    async def void(self, invoice_id: str, now: dt.datetime | None = None) -> schemas.InvoiceDetail:
        """Void a finalised, unpaid invoice (its number stays used)."""
        return await self._transition(invoice_id, "void", ("finalised", "uncollectible"), {}, now or utcnow())

    async def mark_uncollectible(self, invoice_id: str, now: dt.datetime | None = None) -> schemas.InvoiceDetail:
        return await self._transition(invoice_id, "uncollectible", ("finalised",), {}, now or utcnow())

    async def record_payment(
        self, invoice_id: str, payment: schemas.PaymentRecord, now: dt.datetime | None = None
    ) -> schemas.InvoiceDetail:
        return await self._transition(
            invoice_id, "paid", ("finalised", "uncollectible"), {"reference": payment.reference}, now or utcnow()
        )

    async def credit(
        self, invoice_id: str, note: schemas.CreditNoteCreate, actor_id: str | None, now: dt.datetime | None = None
    ) -> schemas.CreditNote:
        """Issue a credit note against a finalised or paid invoice; never more than it totals."""
        invoice = await self._invoice(invoice_id)
        if invoice.status not in ("finalised", "paid", "uncollectible"):
            raise Conflict(f"A {invoice.status} invoice cannot be credited.", code="invalid_invoice_transition")
        if invoice.credited + note.amount > invoice.total:
            raise Unprocessable(
                f"At most {invoice.total - invoice.credited} can still be credited on this invoice.",
                code="credit_exceeds_total",
            )
        with tenant_scope(invoice.tenant_id):
            with dangerously_unscoped():
                number = await self._next_number("credit_note", self.config.credit_note_prefix)
            row = m.CreditNote(
                id=new_id("crn"),
                tenant_id=invoice.tenant_id,
                invoice_id=invoice.id,
                number=number,
                amount=note.amount,
                currency=invoice.currency,
                reason=note.reason,
                created_by=actor_id,
                created_at=now or utcnow(),
            )
            self.db.add(row)
            # The invoice's own figures never change; ``credited`` sums its credit notes.
            await self.db.execute(
                update(m.Invoice).where(m.Invoice.id == invoice.id).values(credited=m.Invoice.credited + note.amount)
            )
            self.directory.audit(
                "credit_note.issued",
                tenant_id=invoice.tenant_id,
                target_type="invoice",
                target_id=invoice.id,
                details={"number": number, "amount": note.amount},
            )
            await self.db.commit()
        return msgspec.convert(row, schemas.CreditNote, from_attributes=True)

    # --- reading ------------------------------------------------------------------------------

    async def _invoice(self, invoice_id: str, tenant_id: str | None = None) -> m.Invoice:
        with dangerously_unscoped() if tenant_id is None else tenant_scope(tenant_id):
            invoice = await self.db.get(m.Invoice, invoice_id, populate_existing=True)
        if invoice is None or (tenant_id is not None and invoice.tenant_id != tenant_id):
            raise NotFound(f"No invoice {invoice_id}.", code="invoice_not_found")
        return invoice

    async def invoice(self, invoice_id: str, tenant_id: str | None = None) -> schemas.InvoiceDetail:
        invoice = await self._invoice(invoice_id, tenant_id)
        with tenant_scope(invoice.tenant_id):
            lines = (
                await self.db.scalars(
                    select(m.InvoiceLine).where(m.InvoiceLine.invoice_id == invoice.id).order_by(m.InvoiceLine.position)
                )
            ).all()
            notes = (
                await self.db.scalars(
                    select(m.CreditNote).where(m.CreditNote.invoice_id == invoice.id).order_by(m.CreditNote.number)
                )
            ).all()
        base = msgspec.structs.asdict(msgspec.convert(invoice, schemas.Invoice, from_attributes=True))
        return schemas.InvoiceDetail(
            **base,
            lines=[msgspec.convert(line, schemas.InvoiceLine, from_attributes=True) for line in lines],
            credit_notes=[msgspec.convert(n, schemas.CreditNote, from_attributes=True) for n in notes],
        )

    def _filtered(
        self, query: Select[Any], *, tenant_id: str | None, period: dt.datetime | None, status: str | None
    ) -> Select[Any]:
        if tenant_id is not None:
            query = query.where(m.Invoice.tenant_id == tenant_id)
        if period is not None:
            query = query.where(m.Invoice.period_start == period_of(_utc(period))[0])
        if status is not None:
            query = query.where(m.Invoice.status == status)
        return query

    async def list_invoices(
        self,
        *,
        tenant_id: str | None = None,
        period: dt.datetime | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> schemas.InvoicePage:
        """Newest period first; ``tenant_id=None`` lists every tenant's (finance)."""
        query = self._filtered(select(m.Invoice), tenant_id=tenant_id, period=period, status=status)
        query = keyset(query, m.Invoice.period_start, m.Invoice.id, cursor, newest_first=True, limit=limit)
        with dangerously_unscoped() if tenant_id is None else tenant_scope(tenant_id):
            rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda i: (i.period_start, i.id))
        return schemas.InvoicePage(
            items=[msgspec.convert(r, schemas.Invoice, from_attributes=True) for r in rows], next_cursor=next_cursor
        )

    async def render_html(self, invoice_id: str, tenant_id: str | None = None) -> str:
        detail = await self.invoice(invoice_id, tenant_id)
        tenant = await self.directory.tenant(detail.tenant_id)
        account = await self._account_row(detail.tenant_id)
        await self.db.commit()
        return render_invoice_html(
            detail,
            tenant_name=tenant.name if tenant else detail.tenant_id,
            billing_email=account.billing_email,
            catalog=self.catalog,
        )

    async def export_invoices_csv(
        self, *, tenant_id: str | None = None, period: dt.datetime | None = None, status: str | None = None
    ) -> str:
        query = self._filtered(select(m.Invoice), tenant_id=tenant_id, period=period, status=status)
        with dangerously_unscoped():
            rows = (await self.db.scalars(query.order_by(m.Invoice.period_start, m.Invoice.number, m.Invoice.id))).all()
        columns = [
            "id",
            "number",
            "tenant_id",
            "status",
            "plan",
            "currency",
            "period_start",
            "period_end",
            "subtotal",
            "tax_rate_bp",
            "tax",
            "total",
            "credited",
            "finalized_at",
            "paid_at",
            "payment_ref",
        ]
        return _csv(columns, ([_cell(getattr(r, c)) for c in columns] for r in rows))

    async def export_lines_csv(
        self, *, tenant_id: str | None = None, period: dt.datetime | None = None, status: str | None = None
    ) -> str:
        query = self._filtered(
            select(m.InvoiceLine, m.Invoice).join(m.Invoice, m.Invoice.id == m.InvoiceLine.invoice_id),
            tenant_id=tenant_id,
            period=period,
            status=status,
        )
        with dangerously_unscoped():
            rows = (
                await self.db.execute(query.order_by(m.Invoice.period_start, m.Invoice.id, m.InvoiceLine.position))
            ).all()
        columns = [
            "invoice_id",
            "invoice_number",
            "tenant_id",
            "invoice_status",
            "currency",
            "position",
            "kind",
            "meter",
            "usage_period_start",
            "description",
            "quantity",
            "included",
            "billable",
            "unit_amount",
            "unit_size",
            "amount",
        ]
        return _csv(
            columns,
            (
                [
                    _cell(v)
                    for v in (
                        inv.id,
                        inv.number,
                        inv.tenant_id,
                        inv.status,
                        inv.currency,
                        line.position,
                        line.kind,
                        line.meter,
                        line.usage_period_start,
                        line.description,
                        line.quantity,
                        line.included,
                        line.billable,
                        line.unit_amount,
                        line.unit_size,
                        line.amount,
                    )
                ]
                for line, inv in rows
            ),
        )

    async def usage(
        self, tenant_id: str, *, period: dt.datetime | None = None, meter: str | None = None
    ) -> schemas.UsageSummary:
        """Each meter's quantity in the period so far, beside the plan's allowance and quota."""
        start, end = period_of(_utc(period) if period else utcnow())
        if meter is not None and meter not in {mt.key for mt in self.catalog.meters}:
            raise ValidationFailed(f"No meter {meter!r}.", code="unknown_meter")
        segments = await self.segments(tenant_id, start, end)
        plan = segments[-1].plan if segments else self.plan((await self.subscriptions(tenant_id))[-1].plan)
        items = []
        for mt in self.catalog.meters:
            if meter is not None and mt.key != meter:
                continue
            quota = plan.quota(mt.key)
            items.append(
                schemas.MeterUsage(
                    tenant_id=tenant_id,
                    meter=mt.key,
                    aggregation=mt.aggregation,
                    unit=mt.unit,
                    period_start=start,
                    period_end=end,
                    quantity=await self.quantity(tenant_id, mt.key, start),
                    included=included_quantity(segments, mt.key, start, end) if segments else 0,
                    quota=quota.limit if quota else None,
                    quota_policy=quota.policy if quota else None,
                )
            )
        await self.db.commit()
        return schemas.UsageSummary(items=items)

    async def revenue(
        self, period: dt.datetime, statuses: Iterable[str] = ("finalised", "paid", "uncollectible")
    ) -> schemas.RevenueSummary:
        """Recurring (base fees) and usage revenue of finalised invoices of one period, per currency."""
        start, end = period_of(_utc(period))
        statuses = list(statuses)
        with dangerously_unscoped():
            invoices = (
                await self.db.scalars(
                    select(m.Invoice).where(m.Invoice.period_start == start, m.Invoice.status.in_(statuses))
                )
            ).all()
            sums = (
                await self.db.execute(
                    select(m.Invoice.currency, m.InvoiceLine.kind, func.sum(m.InvoiceLine.amount))
                    .join(m.Invoice, m.Invoice.id == m.InvoiceLine.invoice_id)
                    .where(m.Invoice.period_start == start, m.Invoice.status.in_(statuses))
                    .group_by(m.Invoice.currency, m.InvoiceLine.kind)
                )
            ).all()
        rows: dict[str, dict[str, int]] = {}
        for inv in invoices:
            row = rows.setdefault(
                inv.currency,
                dict.fromkeys(
                    (
                        "invoices",
                        "recurring",
                        "usage",
                        "adjustments",
                        "subtotal",
                        "tax",
                        "total",
                        "credited",
                        "paid",
                        "outstanding",
                    ),
                    0,
                ),
            )
            row["invoices"] += 1
            row["subtotal"] += inv.subtotal
            row["tax"] += inv.tax
            row["total"] += inv.total
            row["credited"] += inv.credited
            if inv.status == "paid":
                row["paid"] += inv.total - inv.credited
            elif inv.status == "finalised":
                row["outstanding"] += inv.total - inv.credited
        for currency, kind, amount in sums:
            key = {"base_fee": "recurring", "usage": "usage", "adjustment": "adjustments"}[kind]
            rows[currency][key] += int(amount or 0)
        return schemas.RevenueSummary(
            period_start=start,
            period_end=end,
            statuses=statuses,
            rows=[schemas.RevenueRow(currency=c, **v) for c, v in sorted(rows.items())],
        )

    # --- quotas -------------------------------------------------------------------------------

    async def quota_states(self, tenant_id: str, plan_key: str, now: dt.datetime) -> list[QuotaState]:
        plan = self.catalog.plan(plan_key)
        if plan is None:
            return []
        start, end = period_of(now)
        states = []
        for quota in plan.quotas:
            used = await self.quantity(tenant_id, quota.meter, start)
            over = quota.policy == "throttle" and used >= quota.limit
            states.append(
                QuotaState(
                    meter=quota.meter,
                    limit=quota.limit,
                    policy=quota.policy,
                    used=used,
                    exceeded_until=end if over else None,
                )
            )
        return states

    async def quota_overview(self, plans: dict[str, str], now: dt.datetime) -> dict[str, list[QuotaState]]:
        """Quota states of many tenants (tenant id → plan key) with one grouped query per metered quota.

        NOTE: cells pull their config every second or so; the answer is reused for
        ``QUOTA_CACHE_SECONDS`` so those pulls do not each aggregate a month of usage.
        """
        start, end = period_of(now)
        key = (str(self.db.bind.url), start, tuple(sorted(plans.items())))
        cached = _quota_cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        overview = await self._quota_overview(plans, start, end)
        if len(_quota_cache) > 64:
            _quota_cache.clear()
        _quota_cache[key] = (time.monotonic() + QUOTA_CACHE_SECONDS, overview)
        return overview

    async def _quota_overview(
        self, plans: dict[str, str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, list[QuotaState]]:
        meters = {q.meter for key in set(plans.values()) if (p := self.catalog.plan(key)) for q in p.quotas}
        used: dict[str, dict[str, int]] = {}
        with dangerously_unscoped():
            for meter_key in meters:
                meter = self.catalog.meter(meter_key)
                if meter.aggregation == "unique_count":
                    query = (
                        select(m.UsageKey.tenant_id, func.count())
                        .where(m.UsageKey.metric == meter.metric, m.UsageKey.period_start == start)
                        .group_by(m.UsageKey.tenant_id)
                    )
                elif meter.aggregation in ("sum", "count", "max"):
                    aggregate = {
                        "count": func.count(),
                        "sum": func.sum(m.UsageRecord.value),
                        "max": func.max(m.UsageRecord.value),
                    }[meter.aggregation]
                    query = (
                        select(m.UsageRecord.tenant_id, aggregate)
                        .where(m.UsageRecord.metric == meter.metric, m.UsageRecord.period_start == start)
                        .group_by(m.UsageRecord.tenant_id)
                    )
                else:
                    continue
                used[meter_key] = {t: int(v or 0) for t, v in (await self.db.execute(query)).all()}
        overview: dict[str, list[QuotaState]] = {}
        for tenant_id, key in plans.items():
            plan = self.catalog.plan(key)
            if plan is None:
                continue
            overview[tenant_id] = [
                QuotaState(
                    meter=q.meter,
                    limit=q.limit,
                    policy=q.policy,
                    used=(u := used.get(q.meter, {}).get(tenant_id, 0)),
                    exceeded_until=end if q.policy == "throttle" and u >= q.limit else None,
                )
                for q in plan.quotas
            ]
        return overview

    async def check_quotas(self, tenant_id: str, now: dt.datetime) -> None:
        """Warn at 80 % and 100 % of each quota, once per period each: audit log and mail to owners."""
        subs = await self.subscriptions(tenant_id)
        start = period_of(now)[0]
        for state in await self.quota_states(tenant_id, subs[-1].plan, now):
            for threshold in QUOTA_THRESHOLDS:
                if state.used * 100 < state.limit * threshold:
                    continue
                with tenant_scope(tenant_id):
                    statement = (
                        _insert(self.db, m.QuotaWarning)
                        .values(
                            tenant_id=tenant_id,
                            period_start=start,
                            meter=state.meter,
                            threshold=threshold,
                            quantity=state.used,
                            sent_at=now,
                        )
                        .on_conflict_do_nothing()
                    )
                    new = (await self.db.execute(statement.returning(m.QuotaWarning.threshold))).scalar()
                    if new is None:
                        continue
                    self.directory.audit(
                        "quota.warned",
                        tenant_id=tenant_id,
                        target_type="tenant",
                        target_id=tenant_id,
                        details={
                            "meter": state.meter,
                            "threshold": threshold,
                            "used": state.used,
                            "limit": state.limit,
                            "policy": state.policy,
                        },
                    )
                    await self.db.commit()
                meter = self.catalog.meter(state.meter)
                consequence = (
                    (
                        "Further events are refused until the next period begins."
                        if state.policy == "throttle"
                        else "Usage over the quota is billed as overage."
                    )
                    if threshold >= 100
                    else "Nothing changes yet."
                )
                try:
                    await self.directory.notify_owners(
                        tenant_id,
                        f"Livora: {threshold} % of your monthly {meter.name.lower()} quota",
                        f"Your workspace has used {state.used} of {state.limit} {meter.unit}s this period "
                        f"({threshold} % of its quota). {consequence}\n",
                    )
                except Exception:  # the warning is recorded; a mail outage must not lose usage
                    log.exception("quota_mail_failed", tenant_id=tenant_id, threshold=threshold)
        await self.db.commit()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _csv(columns: list[str], rows: Iterable[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        # NOTE: cells a spreadsheet would run as a formula are prefixed (CSV injection).
        writer.writerow(["'" + v if v[:1] in ("=", "+", "-", "@") and not _numeric(v) else v for v in row])
    return out.getvalue()


def _numeric(value: str) -> bool:
    try:
        int(value)
        return True
    except ValueError:
        return False
