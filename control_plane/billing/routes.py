"""Billing endpoints: finance views and actions, a tenant's own invoices and usage, usage intake, webhooks."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from billing import schemas
from control_plane.billing.jobs import run_billing_cycle
from control_plane.identity.principal import Principal
from control_plane.runtime import Services
from control_plane.tenants.routes import Limit
from data_plane.contract.schemas import USAGE_PATH, UsageReceipt, UsageReport
from kernel.errors import ValidationFailed
from kernel.pagination import DEFAULT_LIMIT

Period = Annotated[
    str | None,
    QueryParameter(
        pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="A billing period (calendar month, UTC): `YYYY-MM`."
    ),
]
Status = Annotated[schemas.InvoiceStatus | None, QueryParameter(description="Only invoices in this status.")]


def _period(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        year, month = (int(part) for part in value.split("-"))
        return dt.datetime(year, month, 1, tzinfo=dt.UTC)
    except ValueError:
        raise ValidationFailed("A period is written YYYY-MM.", code="invalid_period") from None


def _csv(text: str, name: str) -> Response[str]:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


def _html(text: str) -> Response[str]:
    return Response(
        text,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "Cache-Control": "no-store",
        },
    )


class FinanceController(Controller):
    """Livora finance (and ops admins): every tenant's invoices, exports, revenue, corrections."""

    path = "/api/v1/billing"
    tags = ["Billing"]

    @get("/plans", operation_id="ListPlans", opt={"permission": ("billing", "read")})
    async def list_plans(self, services: NamedDependency[Services]) -> list[schemas.PlanView]:
        """The plan catalog: base fees, included quantities, price models (minor units) and quotas."""
        return [
            schemas.PlanView(
                key=p.key,
                name=p.name,
                currency=p.currency,
                base_fee=p.base_fee,
                trial_days=p.trial_days,
                components=msgspec.to_builtins(p.components),
                quotas=msgspec.to_builtins(p.quotas),
            )
            for p in services.billing.catalog.plans
        ]

    @get("/invoices", operation_id="ListAllInvoices", opt={"permission": ("billing", "read")})
    async def list_invoices(
        self,
        services: NamedDependency[Services],
        period: Period = None,
        status: Status = None,
        tenant_id: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.InvoicePage:
        """Every tenant's invoices, newest period first; filter by period (`YYYY-MM`), status and tenant."""
        return await services.billing.list_invoices(
            tenant_id=tenant_id or None, period=_period(period), status=status, cursor=cursor, limit=limit
        )

    @get("/invoices/{invoice_id:str}", operation_id="GetAnyInvoice", opt={"permission": ("billing", "read")})
    async def get_invoice(
        self, invoice_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.InvoiceDetail:
        """One invoice with its lines (quantity, tier breakdown, unit price, amount) and credit notes."""
        return await services.billing.invoice(invoice_id)

    @get(
        "/invoices/{invoice_id:str}/html",
        operation_id="RenderAnyInvoice",
        media_type="text/html",
        opt={"permission": ("billing", "read")},
    )
    async def render_invoice(self, invoice_id: FromPath[str], services: NamedDependency[Services]) -> Response[str]:
        """The invoice as a printable HTML page."""
        return _html(await services.billing.render_html(invoice_id))

    @post(
        "/invoices/{invoice_id:str}/refresh",
        operation_id="RefreshDraftInvoice",
        status_code=200,
        opt={"permission": ("billing", "write"), "audit": "invoice.refreshed", "problems": (422,)},
    )
    async def refresh(self, invoice_id: FromPath[str], services: NamedDependency[Services]) -> schemas.InvoiceDetail:
        """Re-rate a draft from the usage received so far. 409 `invoice_immutable` once finalised."""
        return await services.billing.refresh_draft(invoice_id)

    @post(
        "/invoices/{invoice_id:str}/finalize",
        operation_id="FinalizeInvoice",
        status_code=200,
        opt={"permission": ("billing", "write"), "audit": "invoice.finalised"},
    )
    async def finalize(self, invoice_id: FromPath[str], services: NamedDependency[Services]) -> schemas.InvoiceDetail:
        """Finalise a draft before its grace period ends: numbered, frozen, then made payable.

        409 `invoice_immutable` if it is already finalised, `period_not_ended` during its period.
        """
        return await services.billing.finalize(invoice_id)

    @post(
        "/invoices/{invoice_id:str}/void",
        operation_id="VoidInvoice",
        status_code=200,
        opt={"permission": ("billing", "write"), "audit": "invoice.void"},
    )
    async def void(self, invoice_id: FromPath[str], services: NamedDependency[Services]) -> schemas.InvoiceDetail:
        """Void a finalised, unpaid invoice; its number stays taken. 409 from any other status."""
        return await services.billing.void(invoice_id)

    @post(
        "/invoices/{invoice_id:str}/uncollectible",
        operation_id="MarkInvoiceUncollectible",
        status_code=200,
        opt={"permission": ("billing", "write"), "audit": "invoice.uncollectible"},
    )
    async def uncollectible(
        self, invoice_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.InvoiceDetail:
        """Write a finalised invoice off as uncollectible (it can still be paid or voided later)."""
        return await services.billing.mark_uncollectible(invoice_id)

    @post(
        "/invoices/{invoice_id:str}/payments",
        operation_id="RecordInvoicePayment",
        status_code=200,
        opt={"permission": ("billing", "write"), "audit": "invoice.paid"},
    )
    async def record_payment(
        self, invoice_id: FromPath[str], data: JSONBody[schemas.PaymentRecord], services: NamedDependency[Services]
    ) -> schemas.InvoiceDetail:
        """Record a payment received outside the payment provider (e.g. a bank transfer): the invoice is paid."""
        return await services.billing.record_payment(invoice_id, data)

    @post(
        "/invoices/{invoice_id:str}/credit-notes",
        operation_id="CreateCreditNote",
        opt={"permission": ("billing", "write"), "audit": "credit_note.issued", "problems": (422,)},
    )
    async def credit(
        self,
        invoice_id: FromPath[str],
        data: JSONBody[schemas.CreditNoteCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> schemas.CreditNote:
        """Correct a finalised invoice with a numbered credit note (never more than the invoice's total)."""
        return await services.billing.credit(invoice_id, data, principal.id)

    @get(
        "/exports/invoices.csv",
        operation_id="ExportInvoices",
        media_type="text/csv",
        opt={"permission": ("billing", "read")},
    )
    async def export_invoices(
        self,
        services: NamedDependency[Services],
        period: Period = None,
        status: Status = None,
        tenant_id: FromQuery[str | None] = None,
    ) -> Response[str]:
        """Invoices as CSV (amounts in minor units), filtered like the list."""
        text = await services.billing.export_invoices_csv(
            tenant_id=tenant_id or None, period=_period(period), status=status
        )
        return _csv(text, f"invoices-{period or 'all'}.csv")

    @get(
        "/exports/invoice-lines.csv",
        operation_id="ExportInvoiceLines",
        media_type="text/csv",
        opt={"permission": ("billing", "read")},
    )
    async def export_lines(
        self,
        services: NamedDependency[Services],
        period: Period = None,
        status: Status = None,
        tenant_id: FromQuery[str | None] = None,
    ) -> Response[str]:
        """Invoice line items as CSV (meter, quantities, unit price, amount), filtered like the list."""
        text = await services.billing.export_lines_csv(
            tenant_id=tenant_id or None, period=_period(period), status=status
        )
        return _csv(text, f"invoice-lines-{period or 'all'}.csv")

    @get("/revenue", operation_id="GetRevenue", opt={"permission": ("billing", "read")})
    async def revenue(self, services: NamedDependency[Services], period: Period = None) -> schemas.RevenueSummary:
        """Recurring (base fees) and usage revenue of a period's finalised invoices, per currency."""
        return await services.billing.revenue(_period(period) or dt.datetime.now(dt.UTC))

    @post(
        "/close-period",
        operation_id="ClosePeriod",
        status_code=200,
        opt={"permission": ("billing", "write"), "audit": "billing.closed"},
    )
    async def close_period(self, services: NamedDependency[Services]) -> schemas.CloseReport:
        """Run the billing task now: draft ended periods, finalise drafts past their grace, retry payment pushes."""
        return await run_billing_cycle(services)


class TenantBillingController(Controller):
    """A tenant's own billing: owners and admins see their invoices and usage; finance changes plans and tax."""

    path = "/api/v1/tenants/{tenant_id:str}"
    tags = ["Billing"]

    @get("/billing", operation_id="GetBillingAccount", opt={"permission": ("invoices", "read")})
    async def account(self, tenant_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Account:
        """The tenant's plan history, tax rate and invoice address."""
        return await services.billing.account(tenant_id)

    @put(
        "/billing",
        operation_id="UpdateBillingAccount",
        opt={"permission": ("billing", "write"), "audit": "billing_account.updated"},
    )
    async def update_account(
        self, tenant_id: FromPath[str], data: JSONBody[schemas.AccountUpdate], services: NamedDependency[Services]
    ) -> schemas.Account:
        """Set the tenant's tax rate (basis points, for invoices finalised from now on) or invoice address."""
        return await services.billing.update_account(tenant_id, data)

    @post(
        "/billing/plan",
        operation_id="ChangePlan",
        status_code=200,
        opt={"permission": ("billing", "write"), "audit": "subscription.changed", "problems": (422,)},
    )
    async def change_plan(
        self, tenant_id: FromPath[str], data: JSONBody[schemas.PlanChange], services: NamedDependency[Services]
    ) -> schemas.Account:
        """Move the tenant to another plan; the period's base fee and allowances are prorated per plan."""
        return await services.billing.change_plan(tenant_id, data)

    @get("/billing/draft", operation_id="GetDraftInvoice", opt={"permission": ("invoices", "read")})
    async def preview_draft(
        self, tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.DraftPreview:
        """The current period's invoice as it would be rated now, from the usage received so far.

        Nothing is stored or finalised: the real draft appears once the period has ended.
        """
        return await services.billing.preview(tenant_id)

    @get("/invoices", operation_id="ListInvoices", opt={"permission": ("invoices", "read")})
    async def list_invoices(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        period: Period = None,
        status: Status = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.InvoicePage:
        """This tenant's invoices, newest period first."""
        return await services.billing.list_invoices(
            tenant_id=tenant_id, period=_period(period), status=status, cursor=cursor, limit=limit
        )

    @get("/invoices/{invoice_id:str}", operation_id="GetInvoice", opt={"permission": ("invoices", "read")})
    async def get_invoice(
        self, tenant_id: FromPath[str], invoice_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.InvoiceDetail:
        """One of this tenant's invoices with its lines; another tenant's answers 404."""
        return await services.billing.invoice(invoice_id, tenant_id)

    @get(
        "/invoices/{invoice_id:str}/html",
        operation_id="RenderInvoice",
        media_type="text/html",
        opt={"permission": ("invoices", "read")},
    )
    async def render_invoice(
        self, tenant_id: FromPath[str], invoice_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[str]:
        """One of this tenant's invoices as a printable HTML page."""
        return _html(await services.billing.render_html(invoice_id, tenant_id))

    @get("/usage", operation_id="GetUsage", opt={"permission": ("usage", "read")})
    async def usage(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        period: Period = None,
        meter: FromQuery[str | None] = None,
    ) -> schemas.UsageSummary:
        """This tenant's usage per meter in a period (default: the current one), beside its allowances and quotas."""
        return await services.billing.usage(tenant_id, period=_period(period), meter=meter)


class BillingIntakeController(Controller):
    """Machine-to-machine: cells report usage, the payment provider reports payments."""

    tags = ["Billing"]

    @post(
        USAGE_PATH,
        operation_id="ReportUsage",
        status_code=200,
        opt={"cell": True, "audit": "usage.reported", "problems": (422,)},
    )
    async def report_usage(self, data: JSONBody[UsageReport], services: NamedDependency[Services]) -> UsageReceipt:
        """For data-plane cells (their credential): usage records, each counted once by its id.

        A record already received (same id) is a duplicate and changes nothing; usage for a
        period whose invoice is finalised is billed as an adjustment on the next invoice.
        """
        return await services.billing.ingest_usage(data)

    @post(
        "/api/v1/billing/webhooks/stripe",
        operation_id="ReceiveStripeWebhook",
        status_code=200,
        opt={"public": True, "audit": "payment_event.received", "problems": (401,)},
    )
    async def stripe_webhook(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> schemas.WebhookReceipt:
        """For Stripe: signed events (`Stripe-Signature`, 300 s tolerance), stored once per event id, then applied.

        401 `invalid_webhook_signature` for a missing or wrong signature or a stale timestamp.
        """
        body = await request.body()
        return await services.billing.receive_webhook(body, request.headers.get("stripe-signature"))
