"""The cells registry (placement, health, credentials) and the versioned config each cell pulls."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets

import msgspec
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.service import BillingService, QuotaState
from control_plane.analytics.grants import analytics_grants
from control_plane.audit.service import AuditService
from control_plane.cells import schemas
from control_plane.cells.models import Cell, TenantPlacement
from control_plane.db.models import Source, Tenant
from control_plane.identity.secrets import token_hash
from data_plane.contract.schemas import CellConfig, Limits, SourceConfig, TenantConfig, config_digest
from kernel.db import new_id, utcnow
from kernel.errors import Conflict, NotFound, Unavailable
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.tenancy import dangerously_unscoped

# Ingestion limits per plan. NOTE: billing will own plans; until then they live here.
PLAN_LIMITS: dict[str, Limits] = {
    "free": Limits(max_batch_events=100, events_per_second=200, burst_events=1_000),
    "growth": Limits(max_batch_events=500, events_per_second=2_000, burst_events=10_000),
    "enterprise": Limits(max_batch_events=2_500, events_per_second=20_000, burst_events=100_000),
}

BUILTIN_CELL_ID = "cell_builtin"
CREDENTIAL_PREFIX = "lvc"
# Statuses a cell serves config for (a failed tenant has no space yet; a deleted one has none any more).
_SERVED = ("pending", "provisioning", "active", "suspended", "deleting")


def cell_credential(master: str, cell_id: str, version: int) -> str:
    """A registered cell's credential: derived from the installation's cell secret, the cell and a version.

    The control plane presents it when it calls the cell, and recognises it (by its hash) when the cell
    calls; rotating bumps the version. Without the installation secret no credential can be made.
    """
    digest = hmac.new(master.encode(), f"cell:{cell_id}:{version}".encode(), hashlib.sha256).digest()
    return f"{CREDENTIAL_PREFIX}_{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


class CellConfigService:
    def __init__(
        self, db: AsyncSession, billing: BillingService | None = None, *, token_keys: list[str] | None = None
    ) -> None:
        self.db = db
        # Public keys of the cell tokens people present to a cell's analytics API.
        self.token_keys = list(token_keys or [])
        # Plans' monthly quotas, and who is over a throttling one (billing owns plans).
        self.billing = billing

    async def build(self, cell_id: str | None = BUILTIN_CELL_ID) -> CellConfig:
        """The config of the tenants placed on ``cell_id``; revoked sources are left out.

        The built-in cell also serves every tenant placed nowhere yet (the all-in-one mode).
        """
        now = utcnow()
        # The cell serves all of these tenants: reading across them is the point here.
        with dangerously_unscoped():
            query = (
                select(Tenant)
                .outerjoin(TenantPlacement, TenantPlacement.tenant_id == Tenant.id)
                .where(Tenant.status.in_(_SERVED))
                .order_by(Tenant.id)
            )
            if cell_id == BUILTIN_CELL_ID:
                query = query.where(or_(TenantPlacement.cell_id.is_(None), TenantPlacement.cell_id == cell_id))
            else:
                query = query.where(TenantPlacement.cell_id == cell_id)
            tenants = (await self.db.scalars(query)).all()
            ids = [tenant.id for tenant in tenants]
            sources = (
                await self.db.scalars(
                    select(Source).where(Source.revoked_at.is_(None), Source.tenant_id.in_(ids)).order_by(Source.id)
                )
            ).all()
        by_tenant: dict[str, list[SourceConfig]] = {}
        for source in sources:
            in_grace = source.previous_valid_until is not None and source.previous_valid_until > now
            hashes = [source.write_key_hash]
            if in_grace and source.previous_write_key_hash:
                hashes.append(source.previous_write_key_hash)
            by_tenant.setdefault(source.tenant_id, []).append(
                SourceConfig(
                    id=source.id,
                    kind=source.kind,  # type: ignore[arg-type]
                    write_key_hashes=hashes,
                    allowed_origins=list(source.allowed_origins),
                    previous_write_key_hash=source.previous_write_key_hash if in_grace else None,
                    previous_valid_until=source.previous_valid_until if in_grace else None,
                )
            )
        quotas = await self.billing.quota_overview({t.id: t.plan for t in tenants}, now) if self.billing else {}
        grants = await analytics_grants(self.db, ids, now)
        configs = [
            TenantConfig(
                id=tenant.id,
                status=tenant.status,  # type: ignore[arg-type]
                plan=tenant.plan,
                limits=_with_quota(PLAN_LIMITS.get(tenant.plan, Limits()), quotas.get(tenant.id, [])),
                sources=by_tenant.get(tenant.id, []),
                api_keys=grants.get(tenant.id, []),
                quota_exceeded_until=min(
                    (q.exceeded_until for q in quotas.get(tenant.id, []) if q.exceeded_until), default=None
                ),
            )
            for tenant in tenants
        ]
        return CellConfig(
            version=config_digest(configs, self.token_keys),
            generated_at=now,
            tenants=configs,
            token_keys=self.token_keys,
        )


def _with_quota(limits: Limits, quotas: list[QuotaState]) -> Limits:
    events = next((q for q in quotas if q.meter == "events"), None)
    if events is None:
        return limits
    return msgspec.structs.replace(limits, events_per_month=events.limit, over_quota=events.policy)  # type: ignore[arg-type]


class CellService:
    """Registers cells, rotates their credentials, tracks their health and places tenants on them."""

    def __init__(
        self, db: AsyncSession, audit: AuditService, *, heartbeat_seconds: int = 120, master_secret: str = ""
    ) -> None:
        self.db = db
        self.audit = audit
        self.heartbeat = dt.timedelta(seconds=heartbeat_seconds)
        self.master = master_secret

    def _new_credential(self, cell: Cell) -> str:
        if self.master:
            cell.credential_version = (cell.credential_version or 0) + 1
            credential = cell_credential(self.master, cell.id, cell.credential_version)
        else:
            # No installation secret: the cell can pull its config, but the control plane cannot call it
            # (version 0) until LIVORA_CELL_SECRET is set and the credential rotated.
            cell.credential_version = 0
            credential = f"{CREDENTIAL_PREFIX}_{secrets.token_urlsafe(32)}"
        cell.credential_hash, cell.credential_prefix = token_hash(credential), credential[:12]
        return credential

    # --- registry ---------------------------------------------------------------------------

    async def ensure_builtin(self, endpoint: str = "") -> Cell:
        """The all-in-one mode's own cell: pooled, any region, always there."""
        cell = await self.db.get(Cell, BUILTIN_CELL_ID)
        if cell is None:
            cell = Cell(
                id=BUILTIN_CELL_ID,
                name="builtin",
                pattern="B",
                region="*",
                endpoint=endpoint,
                capacity=100_000,
                status="active",
                builtin=True,
                credential_version=0,
                outputs={},
            )
            self.db.add(cell)
            await self.db.flush()
        return cell

    def _health(self, cell: Cell, now: dt.datetime) -> schemas.Health:
        if cell.builtin:
            return "healthy"  # it runs with the control plane, or answers for it in-process
        if cell.last_heartbeat_at is None:
            return "unknown"
        return "healthy" if now - cell.last_heartbeat_at <= self.heartbeat else "stale"

    async def _load(self, cell_ids: list[str]) -> dict[str, int]:
        if not cell_ids:
            return {}
        with dangerously_unscoped():
            rows = await self.db.execute(
                select(TenantPlacement.cell_id, func.count())
                .where(TenantPlacement.cell_id.in_(cell_ids))
                .group_by(TenantPlacement.cell_id)
            )
        return {cell_id: count for cell_id, count in rows.all()}

    async def view(self, cell: Cell, load: int | None = None) -> schemas.Cell:
        if load is None:
            load = (await self._load([cell.id])).get(cell.id, 0)
        return schemas.Cell(
            id=cell.id,
            name=cell.name,
            pattern=cell.pattern,  # type: ignore[arg-type]
            region=cell.region,
            endpoint=cell.endpoint,
            capacity=cell.capacity,
            tenants=load,
            status=cell.status,  # type: ignore[arg-type]
            health=self._health(cell, utcnow()),
            builtin=cell.builtin,
            dedicated_tenant_id=cell.dedicated_tenant_id,
            credential_prefix=cell.credential_prefix,
            last_heartbeat_at=cell.last_heartbeat_at,
            outputs=dict(cell.outputs),
            created_at=cell.created_at,
            updated_at=cell.updated_at,
        )

    async def _cell(self, cell_id: str) -> Cell:
        cell = await self.db.get(Cell, cell_id)
        if cell is None:
            raise NotFound(f"No cell {cell_id}.", code="cell_not_found")
        return cell

    async def get(self, cell_id: str) -> schemas.Cell:
        return await self.view(await self._cell(cell_id))

    async def list(
        self,
        *,
        region: str | None = None,
        pattern: str | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> schemas.CellPage:
        query = select(Cell)
        if region is not None:
            query = query.where(Cell.region == region)
        if pattern is not None:
            query = query.where(Cell.pattern == pattern)
        query = keyset(query, Cell.created_at, Cell.id, cursor, newest_first=False, limit=limit)
        rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda c: (c.created_at, c.id))
        load = await self._load([c.id for c in rows])
        return schemas.CellPage(items=[await self.view(c, load.get(c.id, 0)) for c in rows], next_cursor=next_cursor)

    async def register(self, data: schemas.CellCreate) -> schemas.CellCreated:
        if await self.db.scalar(select(Cell.id).where(Cell.name == data.name)):
            raise Conflict(f"A cell is already called {data.name!r}.", code="cell_name_taken")
        cell = Cell(
            id=new_id("cel"),
            name=data.name,
            pattern=data.pattern,
            region=data.region,
            endpoint=data.endpoint,
            capacity=data.capacity,
            status="active",
            builtin=False,
            credential_version=0,
            outputs={},
        )
        credential = self._new_credential(cell)
        self.db.add(cell)
        self.audit.record(
            "cell.registered",
            tenant_id=None,
            target_type="cell",
            target_id=cell.id,
            details={"name": data.name, "region": data.region},
        )
        # A platform-level audit entry (no tenant): written outside any tenant scope on purpose.
        with dangerously_unscoped():
            await self.db.commit()
        return schemas.CellCreated(cell=await self.view(cell, 0), credential=credential)

    async def update(self, cell_id: str, data: schemas.CellUpdate) -> schemas.Cell:
        cell = await self._cell(cell_id)
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        for field, value in changes.items():
            setattr(cell, field, value)
        self.audit.record("cell.updated", tenant_id=None, target_type="cell", target_id=cell.id, details=changes)
        # A platform-level audit entry (no tenant): written outside any tenant scope on purpose.
        with dangerously_unscoped():
            await self.db.commit()
        return await self.view(cell)

    async def rotate_credential(self, cell_id: str, grace_seconds: int) -> schemas.CellCreated:
        cell = await self._cell(cell_id)
        if cell.builtin:
            raise Conflict(
                "The built-in cell uses the installation's LIVORA_CELL_SECRET; change that setting instead.",
                code="builtin_cell_credential",
            )
        if grace_seconds and cell.credential_hash:
            cell.previous_credential_hash = cell.credential_hash
            cell.previous_valid_until = utcnow() + dt.timedelta(seconds=grace_seconds)
        else:
            cell.previous_credential_hash, cell.previous_valid_until = None, None
        credential = self._new_credential(cell)
        self.audit.record(
            "cell.credential_rotated",
            tenant_id=None,
            target_type="cell",
            target_id=cell.id,
            details={"grace_period_seconds": grace_seconds},
        )
        # A platform-level audit entry (no tenant): written outside any tenant scope on purpose.
        with dangerously_unscoped():
            await self.db.commit()
        return schemas.CellCreated(cell=await self.view(cell), credential=credential)

    async def authenticate(self, credential: str) -> Cell | None:
        """The registered cell this credential belongs to (its current one, or the previous in its grace)."""
        digest = token_hash(credential)
        cell = await self.db.scalar(
            select(Cell).where(or_(Cell.credential_hash == digest, Cell.previous_credential_hash == digest))
        )
        if cell is None or cell.status == "retired":
            return None
        if cell.credential_hash != digest and (
            cell.previous_valid_until is None or cell.previous_valid_until <= utcnow()
        ):
            return None
        return cell

    async def record_heartbeat(self, cell_id: str) -> None:
        """A config pull is a heartbeat; written at most every few seconds per cell."""
        cell = await self.db.get(Cell, cell_id)
        now = utcnow()
        if cell is not None and (
            cell.last_heartbeat_at is None or now - cell.last_heartbeat_at > dt.timedelta(seconds=5)
        ):
            cell.last_heartbeat_at = now
            await self.db.commit()

    # --- placement ------------------------------------------------------------------------

    async def place_pooled(self, region: str, builtin_endpoint: str = "") -> Cell:
        """The least-loaded healthy active pooled cell of ``region`` with room; the built-in cell when there is none."""
        candidates = (
            await self.db.scalars(
                select(Cell).where(
                    Cell.pattern == "B", Cell.status == "active", Cell.region == region, Cell.builtin.is_(False)
                )
            )
        ).all()
        now = utcnow()
        load = await self._load([c.id for c in candidates])
        usable = [c for c in candidates if self._health(c, now) == "healthy" and load.get(c.id, 0) < c.capacity]
        if usable:
            return min(usable, key=lambda c: (load.get(c.id, 0) / c.capacity, load.get(c.id, 0), c.created_at))
        builtin = await self.ensure_builtin(builtin_endpoint)
        if builtin.status != "active":
            raise Unavailable(
                f"No healthy cell with room in {region}; register one or free capacity.", code="no_cell_available"
            )
        return builtin

    async def dedicated(self, tenant_id: str, region: str) -> Cell:
        """The tenant's own Pattern A cell (created once; found again on a repeat)."""
        cell = await self.db.scalar(select(Cell).where(Cell.dedicated_tenant_id == tenant_id))
        if cell is None:
            cell = Cell(
                id=new_id("cel"),
                name=f"dedicated-{tenant_id.replace('_', '-')}"[:63],
                pattern="A",
                region=region,
                endpoint="",
                capacity=1,
                status="active",
                builtin=False,
                dedicated_tenant_id=tenant_id,
                credential_version=0,
                outputs={},
            )
            self.db.add(cell)
            await self.db.flush()
        elif cell.status == "retired":
            cell.status = "active"
        return cell
