"""Starting, watching, retrying and rolling back tenant operations; the runner and drivers behind them."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control_plane.audit.service import AuditService
from control_plane.cells.models import Cell, TenantPlacement
from control_plane.cells.service import BUILTIN_CELL_ID, cell_credential
from control_plane.db.models import Tenant
from control_plane.identity.secrets import token_hash
from control_plane.provisioning import schemas
from control_plane.provisioning.steps import ControlPlaneSteps
from control_plane.settings import Settings
from control_plane.tenants.states import check_transition
from data_plane.contract.spaces import CellSpaces, HttpCellSpaces
from kernel.errors import Conflict, NotFound, Unavailable
from kernel.logging import get_logger
from kernel.pagination import DEFAULT_LIMIT, keyset, page
from kernel.ports.jobs import JobQueue
from kernel.tenancy import dangerously_unscoped, tenant_scope
from provisioning.drivers.aws import AwsDriver, AwsSettings, trust_policy
from provisioning.drivers.local import LocalDriver
from provisioning.models import ProvisioningRun, ProvisioningStep
from provisioning.plan import plan, rollback_plan
from provisioning.runner import Runner, StepContext
from tenant_templates import Catalog, shipped

if TYPE_CHECKING:
    from control_plane.runtime import Services

UNFINISHED = ("queued", "running")
log = get_logger("livora.provisioning")


def run_view(run: ProvisioningRun, steps: list[ProvisioningStep]) -> schemas.Run:
    return schemas.Run(
        id=run.id,
        tenant_id=run.tenant_id,
        operation=run.operation,  # type: ignore[arg-type]
        status=run.status,  # type: ignore[arg-type]
        driver=run.driver,
        template=run.template,
        template_version=run.template_version,
        error=run.error,
        rollback_of=run.rollback_of,
        created_by=run.created_by,
        created_at=run.created_at,
        updated_at=run.updated_at,
        finished_at=run.finished_at,
        steps=[msgspec.convert(step, schemas.Step, from_attributes=True) for step in steps],
    )


class Provisioner:
    """Long-lived (one per process): the runner, its drivers, and the cells it reaches."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        jobs: JobQueue,
        services: Callable[[AsyncSession], Services],
        catalog: Catalog | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.jobs = jobs
        self.catalog = catalog or shipped()
        self.builtin_spaces: CellSpaces | None = None
        self._clients: dict[str, HttpCellSpaces] = {}
        self.local = LocalDriver(self._spaces_for, self.catalog)
        self.aws = AwsDriver(AwsSettings.from_control_plane(settings), self.catalog)
        steps = ControlPlaneSteps(services, self.catalog, settings.builtin_cell_url)
        self.runner = Runner(
            sessionmaker,
            jobs,
            {**steps.handlers(), **self.local.handlers(), **self.aws.handlers()},
            max_attempts=settings.provisioning_max_attempts,
            backoff_seconds=settings.provisioning_backoff_seconds,
            lease_seconds=settings.provisioning_lease_seconds,
            on_failed=self._on_failed,
        )
        self._started = False
        self._resume: asyncio.Task[None] | None = None

    def attach_builtin_cell(self, spaces: CellSpaces) -> None:
        """The all-in-one mode: the built-in cell's spaces are reached in-process, through the same contract."""
        self.builtin_spaces = spaces

    async def _spaces_for(self, context: StepContext) -> CellSpaces | None:
        assert context.db is not None
        placement = await context.db.get(TenantPlacement, context.tenant_id)
        if placement is None or placement.cell_id is None:
            return None
        cell = await context.db.get(Cell, placement.cell_id)
        if cell is None:
            return None
        if cell.builtin and self.builtin_spaces is not None:
            return self.builtin_spaces
        # A dedicated cell in the client's account answers at its stack's endpoint; until one is
        # recorded (e.g. the embedded mode), its space lives in the built-in cell.
        endpoint = cell.endpoint or cell.outputs.get("CellEndpoint") or ""
        if not endpoint and cell.pattern == "A" and self.builtin_spaces is not None:
            return self.builtin_spaces
        endpoint = endpoint or (self.settings.builtin_cell_url if cell.builtin or cell.pattern == "A" else "")
        if not endpoint:
            raise Unavailable(f"cell {cell.name} has no endpoint to reach it at", code="cell_unreachable")
        master = self.settings.cell_secret
        if not master:
            raise Unavailable("LIVORA_CELL_SECRET is not set: no cell can be reached", code="cell_unreachable")
        if not cell.builtin and not cell.credential_version:
            raise Unavailable(
                f"cell {cell.name} was registered without LIVORA_CELL_SECRET: rotate its credential, then retry",
                code="cell_unreachable",
            )
        credential = master if cell.builtin else cell_credential(master, cell.id, cell.credential_version)
        key = f"{endpoint} {token_hash(credential)}"
        if key not in self._clients:
            self._clients[key] = HttpCellSpaces(endpoint, credential)
        return self._clients[key]

    async def _on_failed(self, db: AsyncSession, run: ProvisioningRun) -> None:
        if run.operation != "provision":
            return  # an active tenant stays active when, say, an upgrade fails
        tenant = await db.get(Tenant, run.tenant_id)
        if tenant is not None and tenant.status == "provisioning":
            audit = AuditService(db)
            tenant.status, tenant.status_reason = "failed", run.error
            audit.record(
                "tenant.failed",
                tenant_id=tenant.id,
                target_type="tenant",
                target_id=tenant.id,
                details={"from": "provisioning", "to": "failed", "run_id": run.id, "reason": run.error},
            )

    async def start(self) -> None:
        """Start executing runs in this process, and resume every run a previous process left unfinished."""
        if self._started:
            return
        self._started = True
        await self.jobs.start()
        try:
            await self.runner.resume_unfinished()
        except Exception:
            # The database may be down at start-up: the process still starts, and resumes once it answers.
            log.warning("provisioning_resume_deferred", exc_info=True)
            self._resume = asyncio.create_task(self._resume_later(), name="provisioning-resume")

    async def _resume_later(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self.runner.resume_unfinished()
                return
            except Exception:
                delay = min(delay * 2, 60.0)

    async def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        await self.jobs.close()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self.builtin_spaces is not None:
            await self.builtin_spaces.close()


class ProvisioningService:
    """Tenant operations as runs, and the runs' API. One DB session (a unit of work)."""

    def __init__(self, db: AsyncSession, provisioner: Provisioner, settings: Settings) -> None:
        self.db = db
        self.provisioner = provisioner
        self.settings = settings

    # --- starting runs ---------------------------------------------------------------------

    async def _tenant(self, tenant_id: str) -> Tenant:
        tenant = await self.db.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"No tenant {tenant_id}.", code="tenant_not_found")
        return tenant

    async def _busy(self, tenant_id: str) -> ProvisioningRun | None:
        with tenant_scope(tenant_id):
            return await self.db.scalar(
                select(ProvisioningRun).where(
                    ProvisioningRun.tenant_id == tenant_id, ProvisioningRun.status.in_(UNFINISHED)
                )
            )

    async def start(
        self,
        tenant_id: str,
        operation: str,
        *,
        created_by: str | None = None,
        params: dict[str, Any] | None = None,
        template: str | None = None,
        version: int | None = None,
        wait: bool = True,
    ) -> schemas.Run:
        """Start ``operation`` on the tenant as a run; with ``wait``, give it a few seconds to finish."""
        busy = await self._busy(tenant_id)
        if busy is not None:
            # A run about to finish (say, its last commit after the tenant became active) is waited for.
            await self.wait(busy.id, tenant_id, self.settings.provisioning_wait_seconds)
            self.db.expire_all()
            busy = await self._busy(tenant_id)
        tenant = await self._tenant(tenant_id)
        if busy is not None:
            raise Conflict(
                f"Run {busy.id} ({busy.operation}) is still going for this tenant; wait for it, retry or roll it back.",
                code="run_in_progress",
            )
        params = {**(params or {}), "pattern": tenant.deployment_pattern}
        with tenant_scope(tenant_id):
            placement = await self.db.get(TenantPlacement, tenant_id)
            name = template or (placement.template if placement and operation != "upgrade" else tenant.template)
            try:
                chosen = self.provisioner.catalog.get(name, version)
            except KeyError as exc:
                raise NotFound(str(exc.args[0]), code="template_not_found") from None
            if operation == "provision":
                check_transition(tenant.status, "provisioning")
                if placement is None:
                    placement = TenantPlacement(
                        tenant_id=tenant.id,
                        template=chosen.name,
                        template_version=chosen.version,
                        resources={},
                        starter_content={},
                    )
                    self.db.add(placement)
                if tenant.deployment_pattern == "A" and not placement.external_id:
                    placement.external_id = f"livora-{secrets.token_urlsafe(24)}"
                if params.get("role_arn"):
                    placement.role_arn = params["role_arn"]
                placement.template, placement.template_version = chosen.name, chosen.version
                params["external_id"] = placement.external_id
                params["role_arn"] = placement.role_arn
            elif operation == "upgrade":
                if tenant.status != "active":
                    raise Conflict(
                        f"Only an active tenant can be upgraded; this one is {tenant.status}.", code="tenant_not_active"
                    )
                if placement is not None and (placement.template, placement.template_version) == (
                    chosen.name,
                    chosen.version,
                ):
                    raise Conflict(f"The tenant already runs {chosen.name} v{chosen.version}.", code="template_current")
                params["external_id"] = placement.external_id if placement else None
                params["role_arn"] = placement.role_arn if placement else None
            elif operation == "suspend":
                check_transition(tenant.status, "suspended")
            elif operation == "resume":
                check_transition(tenant.status, "active")
            elif operation == "deprovision":
                if tenant.status != "deleting":
                    check_transition(tenant.status, "deleting")
                if placement is not None:
                    params.setdefault("external_id", placement.external_id)
                    params.setdefault("role_arn", placement.role_arn)
            driver = self.settings.provisioning_driver
            run = self.provisioner.runner.add_run(
                self.db,
                tenant_id=tenant.id,
                operation=operation,
                steps=plan(operation, pattern=tenant.deployment_pattern, driver=driver),
                driver=driver,
                template=chosen.name,
                template_version=chosen.version,
                params=params,
                created_by=created_by,
            )
            if operation == "provision":
                # In the same transaction as the run: a tenant is never provisioning without one.
                await self._transition(tenant, "provisioning")
            AuditService(self.db).record(
                f"provisioning.{operation}_started",
                tenant_id=tenant.id,
                target_type="provisioning_run",
                target_id=run.id,
                details={"template": chosen.name, "version": chosen.version, "driver": driver},
            )
            await self.db.commit()
        return await self._kick_and_wait(run, wait)

    async def _transition(self, tenant: Tenant, target: str, reason: str | None = None) -> None:
        from kernel.db import utcnow

        check_transition(tenant.status, target)
        before = tenant.status
        tenant.status, tenant.status_reason, tenant.status_changed_at = target, reason, utcnow()
        AuditService(self.db).record(
            f"tenant.{target}",
            tenant_id=tenant.id,
            target_type="tenant",
            target_id=tenant.id,
            details={"from": before, "to": target},
        )

    async def _kick_and_wait(self, run: ProvisioningRun, wait: bool) -> schemas.Run:
        await self.provisioner.start()
        await self.provisioner.runner.kick(run.id, run.tenant_id)
        if wait:
            await self.wait(run.id, run.tenant_id, self.settings.provisioning_wait_seconds)
        return await self.get_run(run.id)

    async def wait(self, run_id: str, tenant_id: str, seconds: float) -> str:
        """Poll until the run finishes or ``seconds`` pass; returns its status then."""
        deadline = time.monotonic() + seconds
        while True:
            async with self.provisioner.sessionmaker() as db:
                with tenant_scope(tenant_id):
                    status = await db.scalar(select(ProvisioningRun.status).where(ProvisioningRun.id == run_id))
            if status not in UNFINISHED or time.monotonic() >= deadline:
                return str(status)
            await asyncio.sleep(0.02)

    # --- reading runs ----------------------------------------------------------------------

    async def _run(self, run_id: str) -> ProvisioningRun:
        with dangerously_unscoped():
            run = await self.db.get(ProvisioningRun, run_id)
        if run is None:
            raise NotFound(f"No provisioning run {run_id}.", code="run_not_found")
        return run

    async def _steps(self, run_ids: list[str]) -> dict[str, list[ProvisioningStep]]:
        found: dict[str, list[ProvisioningStep]] = {run_id: [] for run_id in run_ids}
        if not run_ids:
            return found
        with dangerously_unscoped():
            rows = await self.db.scalars(
                select(ProvisioningStep)
                .where(ProvisioningStep.run_id.in_(run_ids))
                .order_by(ProvisioningStep.run_id, ProvisioningStep.position)
            )
            for step in rows:
                found[step.run_id].append(step)
        return found

    async def get_run(self, run_id: str) -> schemas.Run:
        self.db.expire_all()
        run = await self._run(run_id)
        return run_view(run, (await self._steps([run.id]))[run.id])

    async def list_runs(
        self,
        *,
        tenant_id: str | None = None,
        status: str | None = None,
        operation: str | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> schemas.RunPage:
        """Newest first."""
        query = select(ProvisioningRun)
        for column, value in (
            (ProvisioningRun.tenant_id, tenant_id),
            (ProvisioningRun.status, status),
            (ProvisioningRun.operation, operation),
        ):
            if value is not None:
                query = query.where(column == value)
        query = keyset(query, ProvisioningRun.created_at, ProvisioningRun.id, cursor, newest_first=True, limit=limit)
        # Ops views span tenants; a tenant's own list is filtered to it above.
        with dangerously_unscoped():
            rows, next_cursor = page((await self.db.scalars(query)).all(), limit, lambda r: (r.created_at, r.id))
        steps = await self._steps([r.id for r in rows])
        return schemas.RunPage(items=[run_view(r, steps[r.id]) for r in rows], next_cursor=next_cursor)

    # --- operator actions ------------------------------------------------------------------

    async def retry(self, run_id: str, wait: bool = True) -> schemas.Run:
        """A failed run goes on from its failed step, with fresh attempts."""
        run = await self._run(run_id)
        if run.status != "failed":
            raise Conflict(f"Only a failed run can be retried; this one is {run.status}.", code="run_not_failed")
        with tenant_scope(run.tenant_id):
            busy = await self._busy(run.tenant_id)
            if busy is not None:
                raise Conflict(f"Run {busy.id} is still going for this tenant.", code="run_in_progress")
            tenant = await self._tenant(run.tenant_id)
            if run.operation == "provision" and tenant.status == "failed":
                await self._transition(tenant, "provisioning")
            await self.provisioner.runner.retry(self.db, run)
            AuditService(self.db).record(
                "provisioning.retried", tenant_id=run.tenant_id, target_type="provisioning_run", target_id=run.id
            )
            await self.db.commit()
        return await self._kick_and_wait(run, wait)

    async def rollback(self, run_id: str, created_by: str | None = None, wait: bool = True) -> schemas.Run:
        """Undo what a failed provisioning run created, newest first; the tenant goes back to ``pending``."""
        run = await self._run(run_id)
        if run.status != "failed":
            raise Conflict(f"Only a failed run can be rolled back; this one is {run.status}.", code="run_not_failed")
        if run.operation != "provision":
            raise Conflict(
                f"A failed {run.operation} run is retried, not rolled back: its steps only move forward.",
                code="rollback_not_supported",
            )
        with tenant_scope(run.tenant_id):
            busy = await self._busy(run.tenant_id)
            if busy is not None:
                raise Conflict(f"Run {busy.id} is still going for this tenant.", code="run_in_progress")
            steps = (await self._steps([run.id]))[run.id]
            # The failed step may have half-done its work: undo it too (every undo tolerates "nothing there").
            touched = [s.name for s in steps if s.status in ("succeeded", "failed", "running", "retrying")]
            rollback = self.provisioner.runner.add_run(
                self.db,
                tenant_id=run.tenant_id,
                operation="rollback",
                steps=rollback_plan(touched),
                driver=run.driver,
                template=run.template,
                template_version=run.template_version,
                params={**run.params, "rolls_back": run.id},
                created_by=created_by,
                rollback_of=run.id,
            )
            AuditService(self.db).record(
                "provisioning.rollback_started",
                tenant_id=run.tenant_id,
                target_type="provisioning_run",
                target_id=rollback.id,
                details={"rolls_back": run.id},
            )
            await self.db.commit()
        return await self._kick_and_wait(rollback, wait)

    async def placement(self, tenant_id: str) -> schemas.Placement:
        await self._tenant(tenant_id)
        with tenant_scope(tenant_id):
            placement = await self.db.get(TenantPlacement, tenant_id)
        if placement is None:
            raise NotFound("This tenant was never provisioned.", code="placement_not_found")
        return msgspec.convert(placement, schemas.Placement, from_attributes=True)

    async def trust_policy(self, tenant_id: str) -> schemas.TrustPolicy:
        tenant = await self._tenant(tenant_id)
        if tenant.deployment_pattern != "A":
            raise NotFound(
                "This is a Pattern B tenant: it has no role in an AWS account of its own to trust Livora.",
                code="not_pattern_a",
            )
        with tenant_scope(tenant_id):
            placement = await self.db.get(TenantPlacement, tenant_id)
            if placement is None:
                placement = TenantPlacement(
                    tenant_id=tenant.id,
                    template=tenant.template,
                    template_version=self.provisioner.catalog.get(tenant.template).version,
                    resources={},
                    starter_content={},
                )
                self.db.add(placement)
            if not placement.external_id:
                placement.external_id = f"livora-{secrets.token_urlsafe(24)}"
                await self.db.commit()
        principal = self.provisioner.aws.settings.principal_arn
        return schemas.TrustPolicy(
            tenant_id=tenant.id,
            external_id=placement.external_id,
            livora_principal=principal,
            role_arn=placement.role_arn,
            policy=trust_policy(principal, placement.external_id),
            instructions=(
                "In your AWS account, create an IAM role with exactly this trust policy and the permissions to "
                "manage CloudFormation stacks, S3, Kinesis, IAM roles and Secrets Manager; then give Livora its "
                'ARN: POST /api/v1/tenants/{id}/provision with {"role_arn": "arn:aws:iam::…:role/…"}.'
            ).replace("{id}", tenant.id),
        )


BUILTIN = BUILTIN_CELL_ID
