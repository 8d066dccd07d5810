"""Rating without a database: periods, proration across a plan change, trials, included units, late adjustments, tax."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from billing.catalog import Catalog, default_catalog, load_catalog
from billing.prices import rate
from billing.rating import (
    Segment,
    adjustment_line,
    base_fee_lines,
    included_quantity,
    period_of,
    previous_period,
    tax_of,
    usage_line,
)

UTC = dt.UTC
NOV = dt.datetime(2026, 11, 1, tzinfo=UTC)
DEC = dt.datetime(2026, 12, 1, tzinfo=UTC)
catalog = default_catalog()
free, growth, enterprise = (catalog.plan(k) for k in ("free", "growth", "enterprise"))


def test_periods_are_calendar_months_in_utc() -> None:
    assert period_of(dt.datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)) == (NOV, DEC)
    assert period_of(dt.datetime(2026, 12, 31, 23, 0, tzinfo=UTC)) == (DEC, dt.datetime(2027, 1, 1, tzinfo=UTC))
    # 00:30 on 1 Dec in Paris is still November in UTC.
    paris = dt.timezone(dt.timedelta(hours=1))
    assert period_of(dt.datetime(2026, 12, 1, 0, 30, tzinfo=paris)) == (NOV, DEC)
    assert previous_period(NOV) == (dt.datetime(2026, 10, 1, tzinfo=UTC), NOV)


def test_the_seeded_catalog_has_the_three_plans_and_valid_prices() -> None:
    assert [p.key for p in catalog.plans] == ["free", "growth", "enterprise"]
    assert all(p.currency == "eur" for p in catalog.plans)
    assert growth.base_fee == 4900 and free.base_fee == 0
    assert free.quota("events").policy == "throttle"
    assert growth.quota("events").policy == "overage"


def test_a_plan_naming_an_unknown_meter_is_refused(tmp_path) -> None:
    data = msgspec.json.decode(msgspec.json.encode(catalog))
    data["plans"][0]["components"][0]["meter"] = "nope"
    path = tmp_path / "plans.json"
    path.write_bytes(msgspec.json.encode(data))
    with pytest.raises((ValueError, msgspec.ValidationError)):
        load_catalog(path)


def test_a_whole_period_on_one_plan_bills_the_full_base_fee() -> None:
    lines = base_fee_lines([Segment(growth, NOV, DEC)], NOV, DEC)
    assert [(line.amount, line.description) for line in lines] == [(4900, "Growth plan")]


def test_a_plan_change_mid_period_prorates_base_fees_and_allowances() -> None:
    change = dt.datetime(2026, 11, 21, tzinfo=UTC)  # 20 days of 30 on growth, 10 on enterprise
    segments = [Segment(growth, NOV, change), Segment(enterprise, change, DEC)]
    lines = base_fee_lines(segments, NOV, DEC)
    assert [line.amount for line in lines] == [round(4900 * 20 / 30), round(200000 * 10 / 30)]
    assert "21 Nov 2026" not in lines[0].description and "20 Nov 2026" in lines[0].description
    # Allowances too: 20/30 of growth's million events and 10/30 of enterprise's fifty million.
    assert included_quantity(segments, "events", NOV, DEC) == (1_000_000 * 20 + 50_000_000 * 10) // 30


def test_a_trial_waives_the_base_fee_for_its_days() -> None:
    trial_end = dt.datetime(2026, 11, 15, tzinfo=UTC)
    (line,) = base_fee_lines([Segment(growth, NOV, DEC, trial_end)], NOV, DEC)
    assert line.amount == round(4900 * 16 / 30)
    assert "trial" in line.description


def test_usage_over_the_allowance_is_priced_by_the_plan_with_its_tiers() -> None:
    line = usage_line(catalog, growth, "events", 12_345_678, 1_000_000, NOV)
    assert line is not None
    billable = 12_345_678 - 1_000_000
    assert line.billable == billable
    assert line.amount == rate(growth.component("events").price, billable).amount
    assert [t.quantity for t in line.tiers] == [10_000_000, billable - 10_000_000]
    assert usage_line(catalog, growth, "events", 0, 1_000_000, NOV) is None
    under = usage_line(catalog, growth, "events", 999, 1_000_000, NOV)
    assert under is not None and under.amount == 0 and under.billable == 0


def test_late_usage_is_priced_at_the_margin_of_what_was_billed() -> None:
    price = growth.component("events").price
    billed, late = 10_500_000, 1_000_000
    line = adjustment_line(catalog, growth, "events", billed, billed + late, 1_000_000, NOV)
    assert line is not None and line.kind == "adjustment" and line.quantity == late
    assert line.amount == rate(price, billed + late - 1_000_000).amount - rate(price, billed - 1_000_000).amount
    assert adjustment_line(catalog, growth, "events", billed, billed, 1_000_000, NOV) is None


@pytest.mark.parametrize(("subtotal", "bp", "tax"), [(10_000, 2000, 2000), (333, 1950, 65), (0, 2000, 0), (1, 5000, 1)])
def test_tax_rounds_half_up(subtotal: int, bp: int, tax: int) -> None:
    assert tax_of(subtotal, bp) == tax


def test_catalog_is_data() -> None:
    assert isinstance(catalog, Catalog)
    assert {m.aggregation for m in catalog.meters} >= {"sum", "unique_count", "max"}
