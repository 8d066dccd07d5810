"""Every price model against a brute-force reference that prices one unit at a time."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.prices import Price, Tier, per_units, rate


def round_half_up(value: Fraction) -> int:
    return int(value + Fraction(1, 2)) if value >= 0 else -int(-value + Fraction(1, 2))


def reference(price: Price, quantity: int) -> int:
    """Walk the units one by one: which tier (or package) each falls in, and what it costs there."""
    size = price.unit_size
    if price.model == "standard":
        return round_half_up(sum((Fraction(price.unit_amount, size) for _ in range(quantity)), Fraction(0)))
    if price.model == "package":
        total, in_package = 0, 0
        for _ in range(quantity):
            if in_package == 0:
                total += price.package_amount  # a unit that opens a new package pays for it
            in_package = (in_package + 1) % price.package_size
        return total

    def tier_of(unit: int) -> int:
        return next(i for i, t in enumerate(price.tiers) if t.up_to is None or unit <= t.up_to)

    if quantity == 0:
        return 0
    if price.model == "volume":
        tier = price.tiers[tier_of(quantity)]
        return (
            round_half_up(sum((Fraction(tier.unit_amount, size) for _ in range(quantity)), Fraction(0)))
            + tier.flat_amount
        )
    per_tier: dict[int, Fraction] = {}
    for unit in range(1, quantity + 1):
        index = tier_of(unit)
        per_tier[index] = per_tier.get(index, Fraction(0)) + Fraction(price.tiers[index].unit_amount, size)
    return sum(round_half_up(v) + price.tiers[i].flat_amount for i, v in per_tier.items())


@st.composite
def tiers(draw: st.DrawFn) -> list[Tier]:
    bounds = sorted(draw(st.sets(st.integers(1, 300), max_size=4)))
    amounts = st.integers(0, 500)
    flats = st.integers(0, 2_000)
    return [Tier(up_to=b, unit_amount=draw(amounts), flat_amount=draw(flats)) for b in bounds] + [
        Tier(up_to=None, unit_amount=draw(amounts), flat_amount=draw(flats))
    ]


@st.composite
def prices(draw: st.DrawFn) -> Price:
    model = draw(st.sampled_from(["standard", "graduated", "volume", "package"]))
    unit_size = draw(st.sampled_from([1, 1, 3, 10, 1000]))
    if model == "standard":
        return Price(model="standard", unit_amount=draw(st.integers(0, 10_000)), unit_size=unit_size)
    if model == "package":
        return Price(
            model="package", package_size=draw(st.integers(1, 50)), package_amount=draw(st.integers(0, 10_000))
        )
    return Price(model=model, unit_size=unit_size, tiers=draw(tiers()))


@settings(max_examples=400, deadline=None)
@given(price=prices(), quantity=st.integers(0, 600))
def test_every_model_matches_the_brute_force_reference(price: Price, quantity: int) -> None:
    rated = rate(price, quantity)
    assert rated.amount == reference(price, quantity)
    assert rated.amount >= 0
    # The breakdown accounts for every unit and every cent.
    assert sum(t.amount for t in rated.tiers) == rated.amount
    if price.model != "volume":
        assert sum(t.quantity for t in rated.tiers) == quantity


@settings(max_examples=200, deadline=None)
@given(price=prices(), a=st.integers(0, 400), b=st.integers(0, 400))
def test_graduated_standard_and_package_never_charge_less_for_more(price: Price, a: int, b: int) -> None:
    if price.model == "volume":  # volume pricing may legitimately drop at a tier boundary
        return
    low, high = sorted((a, b))
    assert rate(price, low).amount <= rate(price, high).amount


def test_a_worked_graduated_example() -> None:
    price = Price(
        model="graduated",
        unit_size=1000,
        tiers=[Tier(up_to=10_000, unit_amount=25), Tier(up_to=None, unit_amount=15, flat_amount=100)],
    )
    rated = rate(price, 12_500)
    # 10,000 at 25 per 1,000 = 250; 2,500 at 15 per 1,000 = 37.5 → 38, plus the 100 flat fee.
    assert rated.amount == 250 + 38 + 100
    assert [(t.first, t.last, t.quantity, t.amount) for t in rated.tiers] == [
        (1, 10_000, 10_000, 250),
        (10_001, 12_500, 2_500, 138),
    ]


def test_per_units_rounds_half_up() -> None:
    assert per_units(1, 1, 2) == 1
    assert per_units(1, 1, 3) == 0
    assert per_units(3, 1, 2) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "graduated", "tiers": []},
        {"model": "volume", "tiers": [Tier(up_to=10)]},
        {"model": "graduated", "tiers": [Tier(up_to=None), Tier(up_to=None)]},
        {"model": "graduated", "tiers": [Tier(up_to=10), Tier(up_to=5), Tier(up_to=None)]},
        {"model": "standard", "unit_size": 0},
        {"model": "standard", "unit_amount": -1},
    ],
)
def test_invalid_prices_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Price(**kwargs)  # type: ignore[arg-type]


def test_negative_quantities_are_refused() -> None:
    with pytest.raises(ValueError):
        rate(Price(), -1)
