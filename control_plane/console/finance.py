"""Finance pages: invoices across tenants, an invoice and its credit notes, the open period's draft
preview, usage per tenant, revenue; and a workspace's own billing for its owners and admins.

Thin handlers, as in ``routes.py``: each calls the billing service the API calls and renders it.
Each route carries the API route's access rule (``control_plane/billing/routes.py``), so casbin
decides here as there; CSV downloads and printable invoices are the API's own addresses.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from billing.render import money
from billing.schemas import CreditNoteCreate, PaymentRecord
from control_plane.console.admin import failure
from control_plane.console.render import PREFIX, Link, render
from control_plane.console.routes import read_form, see_other
from control_plane.identity.principal import Principal
from control_plane.rbac.authorizer import PLATFORM
from control_plane.runtime import Services
from kernel.errors import AppError

INVOICE_STATUSES = ("draft", "finalised", "paid", "void", "uncollectible")
PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
PAGE_SIZE = 25
# The tenants offered in the pickers (draft preview, usage): the first ones by the tenants list's order.
TENANT_CHOICES = 200
FINANCE = f"{PREFIX}/finance"


def period_of(value: str) -> dt.datetime | None:
    """A `YYYY-MM` field as that month's start; anything else is no filter (the form says how to write it)."""
    if not PERIOD.match(value.strip()):
        return None
    year, month = (int(part) for part in value.strip().split("-"))
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def this_month() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m")


def crumbs(*tail: tuple[str, str]) -> list[Link]:
    trail = [Link("Overview", PREFIX), Link("Finance", FINANCE)]
    trail += [Link(label, href) for label, href in tail]
    return [Link(c.label, c.href, i == len(trail) - 1) for i, c in enumerate(trail)]


async def tenant_names(services: Services) -> dict[str, str]:
    listed = await services.tenants.list(limit=TENANT_CHOICES)
    return {t.id: t.name for t in listed.items}


class FinanceController(Controller):
    """Livora finance and ops: every tenant's invoices, previews, usage and revenue."""

    path = FINANCE

    @get("/", operation_id="ConsoleFinanceInvoices", opt={"permission": ("billing", "read")})
    async def invoices(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        status: FromQuery[str] = "",
        period: FromQuery[str] = "",
        tenant_id: FromQuery[str] = "",
        cursor: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Every tenant's invoices, newest period first, filtered by status, period and tenant; CSV exports."""
        status = status if status in INVOICE_STATUSES else ""
        month = period_of(period)
        period = period.strip() if month else ""
        names = await tenant_names(services)
        tenant_id = tenant_id.strip()[:80]
        listed = await services.billing.list_invoices(
            tenant_id=tenant_id or None, period=month, status=status or None, cursor=cursor, limit=PAGE_SIZE
        )
        filters = {k: v for k, v in {"status": status, "period": period, "tenant_id": tenant_id}.items() if v}
        principal: Principal = request.scope["user"]
        more = urlencode({**filters, "cursor": listed.next_cursor}) if listed.next_cursor else None
        return await render(
            request,
            services,
            "finance/invoices.html",
            title="Invoices",
            crumbs=crumbs(),
            invoices=listed.items,
            next_url=f"{FINANCE}?{more}" if more else None,
            status=status,
            period=period,
            tenant_id=tenant_id,
            statuses=INVOICE_STATUSES,
            names=names,
            filtered=bool(filters),
            export_query=urlencode(filters),
            may_close=services.runtime.authorizer.allows(principal, PLATFORM, "billing", "write"),
            money=money,
        )

    @get("/invoices/{invoice_id:str}", operation_id="ConsoleFinanceInvoice", opt={"permission": ("billing", "read")})
    async def invoice(
        self, request: Request[Any, Any, Any], invoice_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """One invoice: its lines, payment status and credit notes, with its printable page."""
        return await self._invoice(request, services, invoice_id)

    async def _invoice(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        invoice_id: str,
        error: str | None = None,
        status_code: int = 200,
        form: dict[str, str] | None = None,
    ) -> Response[Any]:
        services.db.expire_all()
        invoice = await services.billing.invoice(invoice_id)
        tenant = await services.tenants.find(invoice.tenant_id)
        principal: Principal = request.scope["user"]
        label = invoice.number or "Draft"
        return await render(
            request,
            services,
            "finance/invoice.html",
            title=f"Invoice {label}",
            crumbs=crumbs((label, f"{FINANCE}/invoices/{invoice_id}")),
            invoice=invoice,
            tenant_name=tenant.name if tenant else invoice.tenant_id,
            printable=f"/api/v1/billing/invoices/{invoice_id}/html",
            may_act=services.runtime.authorizer.allows(principal, PLATFORM, "billing", "write"),
            action_base=f"{FINANCE}/invoices/{invoice_id}",
            error=error,
            form=form or {},
            status_code=status_code,
            money=money,
        )

    @post(
        "/invoices/{invoice_id:str}/credit-notes",
        operation_id="ConsoleCreditNote",
        opt={"permission": ("billing", "write"), "audit": "credit_note.issued"},
    )
    async def credit(
        self, request: Request[Any, Any, Any], invoice_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Issue a credit note: the amount in major units (12.50), never more than is left to credit."""
        form = await read_form(request)
        principal: Principal = request.scope["user"]
        try:
            amount = minor_units(form.get("amount", ""))
            note = msgspec.convert({"amount": amount, "reason": form.get("reason", "").strip()}, CreditNoteCreate)
            await services.billing.credit(invoice_id, note, principal.id)
        except (AppError, msgspec.ValidationError, ValueError) as exc:
            detail, status = (
                ("Write the amount like 12.50, more than zero.", 400) if isinstance(exc, ValueError) else failure(exc)
            )
            return await self._invoice(request, services, invoice_id, error=detail, status_code=status, form=form)
        return see_other(request, f"{FINANCE}/invoices/{invoice_id}")

    @post(
        "/invoices/{invoice_id:str}/payments",
        operation_id="ConsoleRecordPayment",
        opt={"permission": ("billing", "write"), "audit": "invoice.paid"},
    )
    async def payment(
        self, request: Request[Any, Any, Any], invoice_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Record a payment received outside the provider (a bank transfer): the invoice is paid."""
        form = await read_form(request)
        try:
            data = msgspec.convert({"reference": form.get("reference", "").strip()}, PaymentRecord)
            await services.billing.record_payment(invoice_id, data)
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            return await self._invoice(request, services, invoice_id, error=detail, status_code=status, form=form)
        return see_other(request, f"{FINANCE}/invoices/{invoice_id}")

    @get("/draft", operation_id="ConsoleFinanceDraft", opt={"permission": ("billing", "read")})
    async def draft(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], tenant_id: FromQuery[str] = ""
    ) -> Response[Any]:
        """The current period's invoice of a tenant as it would be rated now (nothing is stored)."""
        names = await tenant_names(services)
        tenant_id = tenant_id.strip()
        # Any tenant's id previews, not only the ones the picker lists.
        known = bool(tenant_id) and await services.tenants.find(tenant_id) is not None
        preview = await services.billing.preview(tenant_id) if known else None
        return await render(
            request,
            services,
            "finance/draft.html",
            title="Draft preview",
            crumbs=crumbs(("Draft preview", f"{FINANCE}/draft")),
            names=names,
            tenant_id=tenant_id,
            unknown=bool(tenant_id) and preview is None,
            preview=preview,
            form_action=f"{FINANCE}/draft",
            money=money,
        )

    @get("/usage", operation_id="ConsoleFinanceUsage", opt={"permission": ("usage", "read")})
    async def usage(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], period: FromQuery[str] = ""
    ) -> Response[Any]:
        """Each tenant's usage per meter in a period (default: the current one), beside its allowances."""
        month = period_of(period)
        period = period.strip() if month else this_month()
        names = await tenant_names(services)
        rows = [(tid, name, (await services.billing.usage(tid, period=month)).items) for tid, name in names.items()]
        meters = [(mt.key, mt.name) for mt in services.billing.catalog.meters]
        return await render(
            request,
            services,
            "finance/usage.html",
            title="Usage per tenant",
            crumbs=crumbs(("Usage", f"{FINANCE}/usage")),
            rows=rows,
            meters=meters,
            period=period,
        )

    @get("/revenue", operation_id="ConsoleFinanceRevenue", opt={"permission": ("billing", "read")})
    async def revenue(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], period: FromQuery[str] = ""
    ) -> Response[Any]:
        """Recurring and usage revenue of a period's finalised invoices, per currency."""
        month = period_of(period)
        summary = await services.billing.revenue(month or dt.datetime.now(dt.UTC))
        return await render(
            request,
            services,
            "finance/revenue.html",
            title="Revenue",
            crumbs=crumbs(("Revenue", f"{FINANCE}/revenue")),
            summary=summary,
            period=summary.period_start.strftime("%Y-%m"),
            money=money,
        )


def minor_units(text: str) -> int:
    """``"12.5"`` → 1250: decimal text to minor units without floats."""
    match = re.fullmatch(r"\s*(\d{1,12})(?:[.,](\d{1,2}))?\s*", text)
    if not match:
        raise ValueError(text)
    value = int(match.group(1)) * 100 + int((match.group(2) or "0").ljust(2, "0"))
    if value <= 0:
        raise ValueError(text)
    return value


class WorkspaceBillingController(Controller):
    """A workspace's own billing for its owners and admins (and staff): invoices, usage, the draft preview."""

    path = f"{PREFIX}/t/{{tenant_id:str}}/billing"

    @get("/", operation_id="ConsoleWorkspaceBilling", opt={"permission": ("invoices", "read")})
    async def billing(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """This workspace's invoices, this period's usage and what its invoice would be now."""
        tenant = await services.tenants.get(tenant_id)
        invoices = await services.billing.list_invoices(tenant_id=tenant_id, limit=PAGE_SIZE)
        usage = await services.billing.usage(tenant_id)
        preview = await services.billing.preview(tenant_id)
        return await render(
            request,
            services,
            "finance/workspace.html",
            title="Billing",
            crumbs=[
                Link("Overview", PREFIX),
                Link(tenant.name, f"{PREFIX}/t/{tenant_id}"),
                Link("Billing", self.path.replace("{tenant_id:str}", tenant_id), True),
            ],
            tenant_id=tenant_id,
            invoices=invoices.items,
            usage=usage.items,
            preview=preview,
            money=money,
        )

    @get("/invoices/{invoice_id:str}", operation_id="ConsoleWorkspaceInvoice", opt={"permission": ("invoices", "read")})
    async def invoice(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        invoice_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """One of this workspace's invoices; another workspace's answers 404, as the API does."""
        invoice = await services.billing.invoice(invoice_id, tenant_id)
        tenant = await services.tenants.get(tenant_id)
        base = f"{PREFIX}/t/{tenant_id}/billing"
        label = invoice.number or "Draft"
        return await render(
            request,
            services,
            "finance/invoice.html",
            title=f"Invoice {label}",
            crumbs=[
                Link("Overview", PREFIX),
                Link(tenant.name, f"{PREFIX}/t/{tenant_id}"),
                Link("Billing", base),
                Link(label, f"{base}/invoices/{invoice_id}", True),
            ],
            invoice=invoice,
            tenant_name=tenant.name,
            printable=f"/api/v1/tenants/{tenant_id}/invoices/{invoice_id}/html",
            may_act=False,
            action_base="",
            error=None,
            form={},
            money=money,
        )
