"""Helpers for billing tests: a small plan catalog, cell usage reports over HTTP, moving tenants in time."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from billing.catalog import load_catalog
from control_plane.db.models import Tenant
from data_plane.contract.schemas import USAGE_PATH
from tests.support.api import set_columns
from tests.support.world import World

CELL_SECRET = "cell-secret-for-billing-tests"

# `growth` with small numbers, so a handful of events crosses allowances and tiers.
SMALL_CATALOG: dict[str, Any] = {
    "meters": [
        {"key": "events", "metric": "events", "aggregation": "sum", "unit": "event", "name": "Events accepted"},
        {
            "key": "tracked_users",
            "metric": "tracked_users",
            "aggregation": "unique_count",
            "unit": "user",
            "name": "Monthly tracked users",
        },
        {"key": "storage_bytes", "metric": "storage_bytes", "aggregation": "max", "unit": "byte", "name": "Storage"},
        {"key": "api_reports", "metric": "api_reports", "aggregation": "count", "unit": "report", "name": "Reports"},
        {
            "key": "retention_days",
            "metric": "retention_days",
            "aggregation": "latest",
            "unit": "day",
            "name": "Retention",
        },
        {"key": "seats", "metric": "seats", "aggregation": "max", "unit": "seat", "name": "Seats"},
    ],
    "plans": [
        {
            "key": "growth",
            "name": "Growth",
            "currency": "eur",
            "base_fee": 3000,
            "trial_days": 10,
            "components": [
                {
                    "meter": "events",
                    "included": 10,
                    "price": {
                        "model": "graduated",
                        "tiers": [{"up_to": 100, "unit_amount": 7}, {"up_to": None, "unit_amount": 3}],
                    },
                },
                {
                    "meter": "tracked_users",
                    "included": 1,
                    "price": {
                        "model": "volume",
                        "tiers": [
                            {"up_to": 5, "unit_amount": 50},
                            {"up_to": None, "unit_amount": 20, "flat_amount": 100},
                        ],
                    },
                },
                {"meter": "storage_bytes", "price": {"model": "package", "package_size": 1000, "package_amount": 9}},
                {"meter": "seats", "included": 3, "price": {"model": "standard", "unit_amount": 200}},
            ],
            "quotas": [{"meter": "events", "limit": 1000, "policy": "overage"}],
        },
        {
            "key": "enterprise",
            "name": "Enterprise",
            "currency": "eur",
            "base_fee": 60000,
            "components": [
                {"meter": "events", "included": 100, "price": {"model": "standard", "unit_amount": 1}},
                {"meter": "seats", "included": 50, "price": {"model": "standard", "unit_amount": 100}},
            ],
        },
        {
            "key": "free",
            "name": "Free",
            "currency": "eur",
            "components": [{"meter": "events", "included": 50, "price": {"model": "standard", "unit_amount": 0}}],
            "quotas": [{"meter": "events", "limit": 50, "policy": "throttle"}],
        },
    ],
}


def write_small_catalog(folder: Path) -> str:
    path = folder / "plans.json"
    path.write_text(json.dumps(SMALL_CATALOG))
    load_catalog(path)  # the test catalog itself must be valid
    return str(path)


def record(
    tenant_id: str,
    metric: str,
    at: dt.datetime,
    value: int = 0,
    keys: list[str] | None = None,
    record_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": record_id or f"rec-{uuid.uuid4().hex}",
        "tenant_id": tenant_id,
        "metric": metric,
        "timestamp": at.isoformat(),
        "value": value,
        "keys": keys or [],
    }


def report(client: httpx.Client, records: list[dict[str, Any]], secret: str = CELL_SECRET) -> httpx.Response:
    return client.post(
        USAGE_PATH,
        json={"contract": 1, "cell_id": "cell-test", "records": records},
        headers={"Authorization": f"Bearer {secret}"},
    )


def backdate_tenant(world: World, aio: Callable[[Awaitable[Any]], Any], tenant_id: str, at: dt.datetime) -> None:
    """Make the tenant older (before any billing call, which starts its plan at its creation)."""
    set_columns(world, aio, Tenant, tenant_id, created_at=at)


def run(world: World, aio: Callable[[Awaitable[Any]], Any], work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(services)`` on the test's own runtime (what the periodic task and CLI do)."""

    async def go() -> Any:
        async with world.runtime.services() as services:
            return await work(services)

    return aio(go())
