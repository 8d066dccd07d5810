"""Reconciliation: per tenant and hour, accepted = in the lake + dead-lettered + duplicates dropped;
billed = accepted - duplicates once every outcome is known."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from data_plane.lake.layout import TENANTS_PREFIX, check_tenant_id
from data_plane.lake.reader import count_by_hour
from data_plane.lake.store import ObjectStore
from data_plane.usage.ledger import UsageLedger


@dataclass(frozen=True)
class Reconciled:
    """One tenant-hour (of ``received_at``, UTC). ``difference`` is ``accepted - (in_lake +
    dead_lettered + duplicates)``: positive while events are still in flight, and after that 0."""

    tenant_id: str
    hour: dt.datetime
    accepted: int
    in_lake: int
    dead_lettered: int
    duplicates: int
    # Events the customer is charged for: each message id once (written or dead-lettered).
    billed: int = 0

    @property
    def difference(self) -> int:
        return self.accepted - (self.in_lake + self.dead_lettered + self.duplicates)

    @property
    def balanced(self) -> bool:
        return self.difference == 0


async def lake_tenants(store: ObjectStore) -> list[str]:
    """Tenants that have a prefix in the lake."""
    tenants = set()
    for info in await store.list(TENANTS_PREFIX):
        tenant = info.key[len(TENANTS_PREFIX) :].split("/", 1)[0]
        try:
            tenants.add(check_tenant_id(tenant))
        except ValueError:
            continue
    return sorted(tenants)


async def reconcile(
    ledger: UsageLedger,
    store: ObjectStore,
    *,
    tenant_id: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[Reconciled]:
    """Rows for every tenant-hour the ledger or the lake knows, ``since`` ≤ hour < ``until``.

    The lake side is read from the Parquet files themselves (distinct message ids, in the hour of
    their earliest ``received_at``), not from the pipeline's own count of what it wrote.
    """
    ledger_rows = {(row.tenant_id, row.hour): row for row in await ledger.hours(tenant_id, since, until)}
    tenants = {tenant_id} if tenant_id else {tenant for tenant, _ in ledger_rows} | set(await lake_tenants(store))
    lake: dict[tuple[str, dt.datetime], int] = {}
    for tenant in sorted(tenants):
        for hour, number in (await count_by_hour(store, tenant, by="received_at")).items():
            hour = hour.replace(tzinfo=dt.UTC) if hour.tzinfo is None else hour
            if (since is None or hour >= since) and (until is None or hour < until):
                lake[(tenant, hour)] = number
    result = []
    for key in sorted(set(ledger_rows) | set(lake)):
        row = ledger_rows.get(key)
        result.append(
            Reconciled(
                tenant_id=key[0],
                hour=key[1],
                accepted=row.accepted if row else 0,
                in_lake=lake.get(key, 0),
                dead_lettered=row.dead_lettered if row else 0,
                duplicates=row.duplicates if row else 0,
                billed=row.billed if row else 0,
            )
        )
    return result
