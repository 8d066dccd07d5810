"""Price models in integer minor units: standard, graduated, volume and package, with a tier breakdown."""

from __future__ import annotations

from typing import Literal

import msgspec

PriceModel = Literal["standard", "graduated", "volume", "package"]


class Tier(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Units up to ``up_to`` (inclusive; None: open) cost ``unit_amount`` per ``unit_size``, plus ``flat_amount``."""

    up_to: int | None = None
    unit_amount: int = 0
    flat_amount: int = 0


class Price(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How billable units become an amount.

    - ``standard``: ``unit_amount`` per ``unit_size`` units (e.g. 25 cents per 1,000 events).
    - ``graduated``: each tier prices the units that fall in it (like income tax brackets).
    - ``volume``: the tier the whole quantity reaches prices every unit.
    - ``package``: ``package_amount`` per started package of ``package_size`` units.

    Per-unit amounts that are not whole minor units are rounded half up once per tier.
    """

    model: PriceModel = "standard"
    unit_amount: int = 0
    unit_size: int = 1
    tiers: list[Tier] = []
    package_size: int = 1
    package_amount: int = 0

    def __post_init__(self) -> None:
        if self.unit_size < 1 or self.package_size < 1:
            raise ValueError("unit_size and package_size must be at least 1")
        if self.unit_amount < 0 or self.package_amount < 0:
            raise ValueError("amounts are never negative")
        if self.model in ("graduated", "volume"):
            if not self.tiers:
                raise ValueError(f"a {self.model} price needs tiers")
            bounds = [t.up_to for t in self.tiers]
            if bounds[-1] is not None or any(b is None for b in bounds[:-1]):
                raise ValueError("only the last tier is open-ended (up_to: null)")
            closed = [b for b in bounds if b is not None]
            if closed != sorted(set(closed)) or (closed and closed[0] < 1):
                raise ValueError("tier bounds must increase strictly from 1")
            if any(t.unit_amount < 0 or t.flat_amount < 0 for t in self.tiers):
                raise ValueError("amounts are never negative")


class TierLine(msgspec.Struct, frozen=True, kw_only=True):
    """One tier's part of a rated quantity: units ``first``..``last`` (1-based, inclusive)."""

    tier: int
    first: int
    last: int
    quantity: int
    unit_amount: int
    unit_size: int
    flat_amount: int
    amount: int


class Rated(msgspec.Struct, frozen=True, kw_only=True):
    quantity: int
    amount: int
    tiers: list[TierLine]


def per_units(quantity: int, unit_amount: int, unit_size: int) -> int:
    """``quantity * unit_amount / unit_size`` rounded half up, in integers only."""
    return (2 * quantity * unit_amount + unit_size) // (2 * unit_size)


def rate(price: Price, quantity: int) -> Rated:
    """The amount for ``quantity`` billable units (never negative), with its tier breakdown."""
    if quantity < 0:
        raise ValueError("quantity is never negative")
    if price.model == "standard":
        amount = per_units(quantity, price.unit_amount, price.unit_size)
        lines = (
            [
                TierLine(
                    tier=0,
                    first=1,
                    last=quantity,
                    quantity=quantity,
                    unit_amount=price.unit_amount,
                    unit_size=price.unit_size,
                    flat_amount=0,
                    amount=amount,
                )
            ]
            if quantity
            else []
        )
        return Rated(quantity=quantity, amount=amount, tiers=lines)
    if price.model == "package":
        packages = -(-quantity // price.package_size)
        amount = packages * price.package_amount
        lines = (
            [
                TierLine(
                    tier=0,
                    first=1,
                    last=quantity,
                    quantity=quantity,
                    unit_amount=price.package_amount,
                    unit_size=price.package_size,
                    flat_amount=0,
                    amount=amount,
                )
            ]
            if quantity
            else []
        )
        return Rated(quantity=quantity, amount=amount, tiers=lines)
    if quantity == 0:
        return Rated(quantity=0, amount=0, tiers=[])
    if price.model == "volume":
        lower = 0
        for index, tier in enumerate(price.tiers):
            if tier.up_to is None or quantity <= tier.up_to:
                amount = per_units(quantity, tier.unit_amount, price.unit_size) + tier.flat_amount
                line = TierLine(
                    tier=index,
                    first=1,
                    last=quantity,
                    quantity=quantity,
                    unit_amount=tier.unit_amount,
                    unit_size=price.unit_size,
                    flat_amount=tier.flat_amount,
                    amount=amount,
                )
                return Rated(quantity=quantity, amount=amount, tiers=[line])
            lower = tier.up_to
        raise AssertionError(f"no tier for {quantity} above {lower}")  # __post_init__ makes the last tier open
    lines = []
    lower = 0
    for index, tier in enumerate(price.tiers):
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        if upper <= lower:
            break
        units = upper - lower
        amount = per_units(units, tier.unit_amount, price.unit_size) + tier.flat_amount
        lines.append(
            TierLine(
                tier=index,
                first=lower + 1,
                last=upper,
                quantity=units,
                unit_amount=tier.unit_amount,
                unit_size=price.unit_size,
                flat_amount=tier.flat_amount,
                amount=amount,
            )
        )
        lower = upper
    return Rated(quantity=quantity, amount=sum(line.amount for line in lines), tiers=lines)
