"""Pushing the ledger's usage to the control plane (the cell contract's usage half)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import httpx
import msgspec
import structlog

from data_plane.contract.schemas import USAGE_PATH, UsageReceipt, UsageReport
from data_plane.usage.ledger import UsageLedger
from kernel.errors import Unavailable

log = structlog.get_logger("livora.usage")


class UsageSink(Protocol):
    async def send(self, report: UsageReport) -> UsageReceipt:
        """Deliver the report; raise ``Unavailable`` when the control plane did not take it."""
        ...

    async def close(self) -> None: ...


class HttpUsageSink:
    """``POST /internal/v1/cell/usage`` with the cell's credential, as a remote cell does."""

    def __init__(self, control_plane_url: str, credential: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=control_plane_url.rstrip("/"),
            headers={"Authorization": f"Bearer {credential}"},
            timeout=timeout,
        )

    async def send(self, report: UsageReport) -> UsageReceipt:
        try:
            response = await self._client.post(
                USAGE_PATH, content=msgspec.json.encode(report), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"control plane unreachable: {exc}", code="control_plane_unreachable") from exc
        if response.status_code != 200:
            raise Unavailable(
                f"control plane refused the usage report: HTTP {response.status_code} {response.text[:300]}",
                code="usage_report_refused",
            )
        return msgspec.json.decode(response.content, type=UsageReceipt)

    async def close(self) -> None:
        await self._client.aclose()


class InProcessUsageSink:
    """The same contract called in-process (the all-in-one mode): no credential, no network."""

    def __init__(self, take: Callable[[UsageReport], Awaitable[UsageReceipt]]) -> None:
        self._take = take

    async def send(self, report: UsageReport) -> UsageReceipt:
        return await self._take(report)

    async def close(self) -> None:
        return None


class UsagePusher:
    """Sends the ledger's outbox to the control plane every ``interval`` seconds.

    At least once: records leave the outbox only once the control plane answered, and it counts
    each record id once, so a report sent twice (a lost answer, a crash) is billed once.
    """

    def __init__(
        self, ledger: UsageLedger, sink: UsageSink, cell_id: str, *, interval: float = 60.0, batch: int = 500
    ) -> None:
        self.ledger = ledger
        self.sink = sink
        self.cell_id = cell_id
        self.interval = interval
        self.batch = batch

    async def push(self) -> int:
        """Send everything waiting; returns how many records the control plane confirmed."""
        confirmed = 0
        while True:
            records = await self.ledger.take_reports(limit=self.batch)
            if not records:
                return confirmed
            await self.sink.send(UsageReport(cell_id=self.cell_id, records=records))
            await self.ledger.confirm([record.id for record in records])
            confirmed += len(records)
            if len(records) < self.batch:
                return confirmed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.push()
            except Unavailable as exc:
                log.warning("usage_push_failed", error=exc.detail, retry_in_s=self.interval)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass
        try:
            await self.push()
        except Unavailable as exc:
            log.warning("usage_push_failed", error=exc.detail)
