"""Invoice numbers: gap-free and unique when many invoices are finalised at once, and after a failure."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select

from billing.models import Invoice, Subscription
from control_plane.db.models import Tenant
from control_plane.runtime import Runtime
from kernel.db import new_id
from kernel.tenancy import dangerously_unscoped, tenant_scope

Aio = Callable[[Awaitable[Any]], Any]
UTC = dt.UTC


async def _tenants_with_drafts(runtime: Runtime, count: int) -> list[str]:
    ids = []
    async with runtime.services() as services:
        for n in range(count):
            tenant = Tenant(
                id=new_id("ten"),
                name=f"T{n}",
                slug=f"t-{n}-{new_id('x')[-8:]}",
                plan="growth",
                deployment_pattern="B",
                region="eu-west-1",
                template="ecommerce",
                status="active",
                created_at=dt.datetime(2025, 1, 1, tzinfo=UTC),
            )
            services.db.add(tenant)
            await services.db.flush()
            with tenant_scope(tenant.id):
                services.db.add(
                    Subscription(
                        id=new_id("sub"),
                        tenant_id=tenant.id,
                        plan="growth",
                        started_at=dt.datetime(2025, 1, 1, tzinfo=UTC),
                    )
                )
                await services.db.flush()
            ids.append(tenant.id)
        with dangerously_unscoped():
            await services.db.commit()
        drafts = []
        for tenant_id in ids:
            drafts.append(
                (
                    await services.billing.draft(
                        tenant_id, dt.datetime(2026, 9, 1, tzinfo=UTC), dt.datetime(2026, 10, 1, tzinfo=UTC)
                    )
                ).id
            )
    return drafts


async def _finalise_concurrently(runtime: Runtime, invoice_ids: list[str]) -> list[str]:
    async def one(invoice_id: str) -> str:
        for _ in range(50):  # SQLite has one writer: a busy database is retried, as the job would next run
            try:
                async with runtime.services() as services:
                    detail = await services.billing.finalize(
                        invoice_id, dt.datetime(2026, 10, 5, tzinfo=UTC), push=False
                    )
                    return str(detail.number)
            except Exception as exc:
                if "locked" not in str(exc):
                    raise
                await asyncio.sleep(0.05)
        raise AssertionError("database stayed locked")

    return list(await asyncio.gather(*(one(i) for i in invoice_ids)))


def test_numbers_are_gap_free_under_concurrency(backend: str, runtime: Runtime, aio: Aio) -> None:
    count = 24 if backend == "postgres" else 8
    drafts = aio(_tenants_with_drafts(runtime, count))
    numbers = aio(_finalise_concurrently(runtime, drafts))
    values = sorted(int(n.removeprefix("LIV-")) for n in numbers)
    assert values == list(range(1, count + 1)), numbers


def test_a_failed_finalisation_gives_its_number_back(runtime: Runtime, aio: Aio) -> None:
    drafts = aio(_tenants_with_drafts(runtime, 2))

    async def fail_then_succeed() -> list[str]:
        async with runtime.services() as services:
            billing = services.billing
            original = billing.directory.audit

            def broken(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("crash after numbering")

            billing.directory.audit = broken  # type: ignore[method-assign]
            with pytest.raises(RuntimeError):
                await billing.finalize(drafts[0], dt.datetime(2026, 10, 5, tzinfo=UTC), push=False)
            await services.db.rollback()
            billing.directory.audit = original  # type: ignore[method-assign]
        numbers = []
        for invoice_id in drafts:
            async with runtime.services() as services:
                numbers.append(
                    str(
                        (
                            await services.billing.finalize(
                                invoice_id, dt.datetime(2026, 10, 5, tzinfo=UTC), push=False
                            )
                        ).number
                    )
                )
        async with runtime.services() as services:
            with dangerously_unscoped():
                statuses = (await services.db.scalars(select(Invoice.status))).all()
        assert set(statuses) == {"finalised"}
        return numbers

    assert aio(fail_then_succeed()) == ["LIV-000001", "LIV-000002"]
