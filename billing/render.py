"""Printable invoices: HTML from a jinja2 template, escaped, with amounts in major units."""

from __future__ import annotations

import datetime as dt
from functools import cache
from typing import TYPE_CHECKING

import jinja2

if TYPE_CHECKING:
    from billing.catalog import Catalog
    from billing.schemas import InvoiceDetail

# Currencies without minor units (ISO 4217 exponent 0) that plans might use.
ZERO_DECIMAL = frozenset({"jpy", "krw", "clp", "vnd", "isk", "huf"})


def money(amount: int, currency: str) -> str:
    """``123456, "eur"`` → ``1,234.56 EUR`` (integer arithmetic, no floats)."""
    if currency.lower() in ZERO_DECIMAL:
        return f"{amount:,} {currency.upper()}"
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), 100)
    return f"{sign}{whole:,}.{cents:02d} {currency.upper()}"


def day(value: dt.datetime | None) -> str:
    return value.strftime("%d %b %Y") if value else ""


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("billing", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = money
    env.filters["day"] = day
    env.filters["thousands"] = lambda n: f"{n:,}"
    return env


def render_invoice_html(
    invoice: InvoiceDetail, *, tenant_name: str, billing_email: str | None, catalog: Catalog
) -> str:
    last_day = invoice.period_end - dt.timedelta(seconds=1)
    units = {m.key: m.unit for m in catalog.meters}
    return (
        _environment()
        .get_template("invoice.html.jinja")
        .render(invoice=invoice, tenant_name=tenant_name, billing_email=billing_email, last_day=last_day, units=units)
    )
