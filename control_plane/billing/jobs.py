"""The billing cycle as plain async functions, and the small periodic task that runs them in the app."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import msgspec

from billing.schemas import CloseReport
from kernel.db import utcnow
from kernel.logging import get_logger

if TYPE_CHECKING:
    from litestar import Litestar

    from control_plane.runtime import Runtime, Services

log = get_logger("livora.billing.jobs")


async def run_billing_cycle(services: Services, now: dt.datetime | None = None) -> CloseReport:
    """Snapshot seats, draft the period that ended, finalise drafts past their grace, retry payment pushes."""
    now = now or utcnow()
    billing = services.billing
    await billing.snapshot_seats(now)
    drafts = await billing.close_periods(now)
    finalised = await billing.finalize_due(now)
    await billing.process_stored_events(now)
    pushed, failures = await billing.sync_pending(now)
    return CloseReport(drafts=drafts, finalised=finalised, pushed=pushed, push_failures=failures)


async def finalize_due_invoices(runtime: Runtime, now: dt.datetime | None = None) -> list[str]:
    """Draft ended periods and finalise every draft whose grace period is over; returns invoice numbers."""
    now = now or utcnow()
    async with runtime.services() as services:
        await services.billing.close_periods(now)
        return await services.billing.finalize_due(now)


async def sync_pending_payments(runtime: Runtime, now: dt.datetime | None = None) -> tuple[int, int]:
    """Push finalised invoices the payment provider has not accepted yet; returns (pushed, still failing)."""
    async with runtime.services() as services:
        await services.billing.process_stored_events(now)
        return await services.billing.sync_pending(now)


@asynccontextmanager
async def billing_task(app: Litestar) -> AsyncIterator[None]:
    """Lifespan: every ``billing_job_interval_seconds`` run the cycle (0 turns it off).

    NOTE: the cycle is safe to run from several processes at once: drafts are unique per tenant and
    period, numbers come from a locked sequence, and pushes use idempotency keys.
    """
    runtime: Runtime = app.state.runtime
    interval = runtime.settings.billing_job_interval_seconds
    if interval <= 0:
        yield
        return

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                async with runtime.services() as services:
                    report = await run_billing_cycle(services)
                if report.drafts or report.finalised or report.pushed or report.push_failures:
                    log.info("billing_cycle", **msgspec.structs.asdict(report))
            except Exception:
                log.exception("billing_cycle_failed")

    task = asyncio.create_task(loop(), name="billing-cycle")
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
