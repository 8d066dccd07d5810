"""Rating: a period's usage and plan timeline become invoice lines (pure functions, no I/O)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import msgspec

from billing.catalog import Catalog, Plan
from billing.prices import TierLine, rate


def period_of(moment: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The calendar month (UTC) holding ``moment``: ``[start, end)``."""
    moment = moment.astimezone(dt.UTC)
    start = dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def previous_period(start: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    return period_of(start - dt.timedelta(seconds=1))


@dataclass(frozen=True)
class Segment:
    """A stretch of the period on one plan; ``trial_end`` waives the base fee and usage before it."""

    plan: Plan
    start: dt.datetime
    end: dt.datetime
    trial_end: dt.datetime | None = None


class LineDraft(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # base_fee | usage | adjustment
    description: str
    amount: int
    meter: str | None = None
    usage_period_start: dt.datetime | None = None
    quantity: int = 0
    included: int = 0
    billable: int = 0
    unit_amount: int | None = None
    unit_size: int = 1
    tiers: list[TierLine] = []


def _seconds(a: dt.datetime, b: dt.datetime) -> int:
    return max(0, int((b - a).total_seconds()))


def _label(moment: dt.datetime) -> str:
    return moment.strftime("%d %b %Y")


def clip(segments: list[Segment], start: dt.datetime, end: dt.datetime) -> list[Segment]:
    clipped = []
    for s in segments:
        a, b = max(s.start, start), min(s.end, end)
        if b > a:
            clipped.append(Segment(s.plan, a, b, s.trial_end))
    return clipped


def base_fee_lines(segments: list[Segment], start: dt.datetime, end: dt.datetime) -> list[LineDraft]:
    """One line per plan segment: the base fee prorated by the paid (non-trial) seconds it covers."""
    period = _seconds(start, end)
    lines = []
    for s in clip(segments, start, end):
        paid_from = max(s.start, s.trial_end) if s.trial_end else s.start
        paid = _seconds(paid_from, s.end)
        amount = (2 * s.plan.base_fee * paid + period) // (2 * period)
        whole = s.start == start and s.end == end and paid == period
        description = f"{s.plan.name} plan" + (
            "" if whole else f", {_label(s.start)} to {_label(s.end - dt.timedelta(seconds=1))}"
        )
        if paid < _seconds(s.start, s.end):
            description += " (trial until " + _label(s.trial_end) + ")"  # type: ignore[arg-type]
        lines.append(
            LineDraft(
                kind="base_fee",
                description=description,
                amount=amount,
                quantity=paid,
                billable=paid,
                unit_amount=s.plan.base_fee,
                unit_size=period,
            )
        )
    return lines


def included_quantity(segments: list[Segment], meter: str, start: dt.datetime, end: dt.datetime) -> int:
    """The allowance of ``meter``: each segment's plan allowance in proportion to the time it covers."""
    period = _seconds(start, end)
    total = 0
    for s in clip(segments, start, end):
        component = s.plan.component(meter)
        if component is not None:
            total += component.included * _seconds(s.start, s.end)
    return total // period


def usage_line(
    catalog: Catalog, plan: Plan, meter: str, quantity: int, included: int, usage_period_start: dt.datetime
) -> LineDraft | None:
    """Usage of ``meter`` priced by ``plan`` (the plan in force at the period's end)."""
    component = plan.component(meter)
    if component is None or quantity == 0:
        return None
    billable = max(0, quantity - included)
    rated = rate(component.price, billable)
    price = component.price
    unit_amount = (
        price.unit_amount if price.model == "standard" else price.package_amount if price.model == "package" else None
    )
    unit_size = price.package_size if price.model == "package" else price.unit_size
    return LineDraft(
        kind="usage",
        description=catalog.meter(meter).name,
        meter=meter,
        usage_period_start=usage_period_start,
        quantity=quantity,
        included=included,
        billable=billable,
        unit_amount=unit_amount,
        unit_size=unit_size,
        amount=rated.amount,
        tiers=rated.tiers,
    )


def adjustment_line(
    catalog: Catalog, plan: Plan, meter: str, billed: int, now: int, included: int, usage_period_start: dt.datetime
) -> LineDraft | None:
    """Usage of a finalised period that arrived late: the difference it makes at that period's prices."""
    component = plan.component(meter)
    if component is None or now <= billed:
        return None
    before = rate(component.price, max(0, billed - included)).amount
    after = rate(component.price, max(0, now - included))
    period = usage_period_start.strftime("%B %Y")
    return LineDraft(
        kind="adjustment",
        description=f"{catalog.meter(meter).name}: late usage for {period}",
        meter=meter,
        usage_period_start=usage_period_start,
        quantity=now - billed,
        included=0,
        billable=max(0, now - included) - max(0, billed - included),
        amount=after.amount - before,
        tiers=after.tiers,
    )


def tax_of(subtotal: int, rate_bp: int) -> int:
    """Tax at ``rate_bp`` basis points (2000 = 20 %), rounded half up; never negative."""
    return max(0, (2 * subtotal * rate_bp + 10_000) // 20_000)
