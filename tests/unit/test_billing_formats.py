"""Money formatting, CSV cells a spreadsheet would execute, and webhook signatures, without a server."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import json

import pytest

from billing.payments.port import InvalidSignature
from billing.payments.stripe_driver import StripeGateway
from billing.render import money
from billing.service import _csv


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (0, "eur", "0.00 EUR"),
        (5, "eur", "0.05 EUR"),
        (123456, "usd", "1,234.56 USD"),
        (-250, "eur", "-2.50 EUR"),
        (1500, "jpy", "1,500 JPY"),
    ],
)
def test_money_is_formatted_from_minor_units(amount: int, currency: str, text: str) -> None:
    assert money(amount, currency) == text


def test_csv_cells_that_would_run_as_formulas_are_defused() -> None:
    text = _csv(["a", "b", "c"], [['=HYPERLINK("x")', "-42", "@SUM(A1)"], ["+1+1", "plain", ""]])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1] == ['\'=HYPERLINK("x")', "-42", "'@SUM(A1)"]  # a negative number stays a number
    assert rows[2] == ["'+1+1", "plain", ""]


def _signed(payload: bytes, timestamp: int, secret: str = "whsec_unit") -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v0=ignored,v1={digest}"


def test_stripe_signatures_are_checked_with_a_300_second_tolerance() -> None:
    gateway = StripeGateway("sk_test_unit", "whsec_unit", "http://127.0.0.1:9")
    payload = json.dumps(
        {
            "id": "evt_1",
            "type": "invoice.paid",
            "data": {"object": {"object": "invoice", "id": "in_1", "metadata": {"livora_invoice_id": "inv_1"}}},
        }
    ).encode()
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    t = int(now.timestamp())
    event = gateway.verify_event(payload, _signed(payload, t - 300), now)
    assert (event.id, event.kind, event.invoice_ref, event.invoice_id) == ("evt_1", "paid", "in_1", "inv_1")
    for header in (
        None,
        "",
        "t=abc,v1=00",
        _signed(payload, t - 301),
        _signed(payload, t + 301),
        _signed(payload, t, "whsec_other"),
        _signed(payload + b" ", t).replace("v1=", "v1=0"),
    ):
        with pytest.raises(InvalidSignature):
            gateway.verify_event(payload, header, now)
    with pytest.raises(InvalidSignature):
        gateway.verify_event(b"not json", _signed(b"not json", t), now)
