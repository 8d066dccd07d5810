"""Meters and plans as data: ``plans.json`` is the catalog, validated when it is loaded."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import msgspec

from billing.prices import Price

Aggregation = Literal["count", "sum", "max", "unique_count", "latest"]
QuotaPolicy = Literal["overage", "throttle"]
CATALOG_PATH = Path(__file__).with_name("plans.json")


class Meter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a usage metric becomes per billing period.

    ``count`` counts records, ``sum`` adds their values, ``max`` keeps the largest value,
    ``latest`` the value of the last record in time, ``unique_count`` counts distinct keys
    across the whole period (monthly tracked users are not a sum of hourly counts).
    """

    key: str
    metric: str
    aggregation: Aggregation
    unit: str
    name: str


class Component(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A metered charge of a plan: ``included`` units are free each period, the rest follow ``price``."""

    meter: str
    included: int = 0
    price: Price = Price()


class Quota(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A ceiling on one meter per period: ``overage`` keeps ingesting and bills, ``throttle`` answers 429."""

    meter: str
    limit: int
    policy: QuotaPolicy


class Plan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key: str
    name: str
    currency: str
    # Per billing period, prorated by time when the plan changes mid-period.
    base_fee: int = 0
    # Days a new subscription on this plan may start free (base fee and usage), when asked for.
    trial_days: int = 0
    components: list[Component] = []
    quotas: list[Quota] = []

    def component(self, meter: str) -> Component | None:
        return next((c for c in self.components if c.meter == meter), None)

    def quota(self, meter: str) -> Quota | None:
        return next((q for q in self.quotas if q.meter == meter), None)


class Catalog(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    meters: list[Meter]
    plans: list[Plan]

    def __post_init__(self) -> None:
        meters = {m.key for m in self.meters}
        if len(meters) != len(self.meters):
            raise ValueError("meter keys must be unique")
        if len({p.key for p in self.plans}) != len(self.plans):
            raise ValueError("plan keys must be unique")
        for plan in self.plans:
            if len(plan.currency) != 3 or plan.currency != plan.currency.lower():
                raise ValueError(f"plan {plan.key}: currency is a lower-case ISO 4217 code")
            for meter in [c.meter for c in plan.components] + [q.meter for q in plan.quotas]:
                if meter not in meters:
                    raise ValueError(f"plan {plan.key} names unknown meter {meter!r}")
            if min([plan.base_fee, plan.trial_days, *(c.included for c in plan.components)]) < 0:
                raise ValueError(f"plan {plan.key}: amounts and quantities are never negative")

    def plan(self, key: str) -> Plan | None:
        return next((p for p in self.plans if p.key == key), None)

    def meter(self, key: str) -> Meter:
        return next(m for m in self.meters if m.key == key)

    def meters_of(self, metric: str) -> list[Meter]:
        return [m for m in self.meters if m.metric == metric]


def load_catalog(path: Path = CATALOG_PATH) -> Catalog:
    """Read and validate a catalog file; a bad file raises ``msgspec.ValidationError``/``ValueError``."""
    return msgspec.json.decode(path.read_bytes(), type=Catalog)


@cache
def default_catalog() -> Catalog:
    return load_catalog()
