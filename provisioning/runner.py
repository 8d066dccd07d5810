"""Runs tenant operations as persisted state machines of idempotent steps, through the jobs port.

A run is ``queued → running → succeeded | failed`` (and ``failed → rolled_back`` when a rollback
run undid it). Each step is ``pending → running → succeeded``, or ``retrying`` with its error and
the time of the next try, or ``failed`` when the tries are spent (or the error cannot be retried).

The state is written before and after every step, so a process killed mid-run leaves the step it
was in ``running``: whoever resumes the run (``resume_unfinished`` at start-up) runs that step
again, which is safe because every step first looks for what it would create. A lease on the run
(renewed while a step runs) keeps two processes from executing one run at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.db import new_id, utcnow
from kernel.errors import AppError
from kernel.logging import get_logger
from kernel.ports.jobs import JobQueue
from kernel.tenancy import dangerously_unscoped, tenant_scope
from provisioning.models import ProvisioningRun, ProvisioningStep

log = get_logger("livora.provisioning")

JOB = "provisioning.advance"


class StepFailed(Exception):
    """A step error that retrying cannot fix (e.g. a role that does not trust Livora): the run fails at once."""


@dataclass
class StepContext:
    run_id: str
    tenant_id: str
    operation: str
    driver: str
    template: str
    template_version: int
    params: dict[str, Any]
    attempt: int
    # Outputs of this run's earlier steps, by step name.
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Outputs of the run this one rolls back (rollback runs only), by step name.
    undone: dict[str, dict[str, Any]] = field(default_factory=dict)
    db: AsyncSession | None = None


StepHandler = Callable[[StepContext], Awaitable[dict[str, Any]]]
FailureHook = Callable[[AsyncSession, ProvisioningRun], Awaitable[None]]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AppError):
        return exc.detail
    text = str(exc) or type(exc).__name__
    return text[:2000]


class Runner:
    """Executes runs. ``handlers`` maps each step name to its (idempotent) implementation."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        jobs: JobQueue,
        handlers: Mapping[str, StepHandler],
        *,
        max_attempts: int = 5,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 300.0,
        lease_seconds: float = 30.0,
        on_failed: FailureHook | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.jobs = jobs
        self.handlers = dict(handlers)
        self.max_attempts = max_attempts
        self.backoff = backoff_seconds
        self.max_backoff = max_backoff_seconds
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.on_failed = on_failed
        self.owner = f"runner-{secrets.token_hex(8)}"
        # The job itself is not retried by the queue: the run's own steps count their attempts.
        jobs.register(JOB, self._job, max_tries=3, backoff=1.0)

    # --- creating and kicking runs ----------------------------------------------------------

    def add_run(
        self,
        db: AsyncSession,
        *,
        tenant_id: str,
        operation: str,
        steps: list[str],
        driver: str,
        template: str,
        template_version: int,
        params: dict[str, Any] | None = None,
        created_by: str | None = None,
        rollback_of: str | None = None,
    ) -> ProvisioningRun:
        """Add a queued run and its steps to ``db`` (the caller commits, in its own transaction)."""
        unknown = [name for name in steps if name not in self.handlers]
        if unknown:
            raise ValueError(f"no handler for steps {unknown}")
        run = ProvisioningRun(
            id=new_id("run"),
            tenant_id=tenant_id,
            operation=operation,
            status="queued",
            driver=driver,
            template=template,
            template_version=template_version,
            params=params or {},
            created_by=created_by,
            rollback_of=rollback_of,
        )
        db.add(run)
        for position, name in enumerate(steps):
            db.add(
                ProvisioningStep(
                    id=new_id("stp"),
                    run_id=run.id,
                    tenant_id=tenant_id,
                    position=position,
                    name=name,
                    status="pending",
                    attempts=0,
                    outputs={},
                )
            )
        return run

    async def kick(self, run_id: str, tenant_id: str, *, delay: float = 0.0) -> None:
        """Have the run advanced (now, or after ``delay`` seconds) by whichever process takes the job."""
        await self.jobs.enqueue(JOB, {"run_id": run_id, "tenant_id": tenant_id}, job_id=f"run:{run_id}", delay=delay)

    async def resume_unfinished(self) -> int:
        """Queue every run that is not finished (after a restart, or a crash): they go on where they stopped."""
        async with self.sessionmaker() as db:
            with dangerously_unscoped():
                rows = (
                    await db.execute(
                        select(ProvisioningRun.id, ProvisioningRun.tenant_id).where(
                            ProvisioningRun.status.in_(("queued", "running"))
                        )
                    )
                ).all()
        for run_id, tenant_id in rows:
            await self.kick(run_id, tenant_id)
        return len(rows)

    # --- executing ------------------------------------------------------------------------

    async def _job(self, payload: dict[str, Any]) -> None:
        await self.advance(payload["run_id"], payload["tenant_id"])

    async def _take_lease(self, db: AsyncSession, run_id: str) -> bool:
        now = utcnow()
        result = await db.execute(
            update(ProvisioningRun)
            .where(
                ProvisioningRun.id == run_id,
                ProvisioningRun.status.in_(("queued", "running")),
                or_(
                    ProvisioningRun.lease_until.is_(None),
                    ProvisioningRun.lease_until < now,
                    ProvisioningRun.lease_owner == self.owner,
                ),
            )
            .values(status="running", lease_owner=self.owner, lease_until=now + self.lease)
            .execution_options(synchronize_session=False)
        )
        await db.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def _renew(self, run_id: str, tenant_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            with contextlib.suppress(Exception):
                async with self.sessionmaker() as db:
                    with tenant_scope(tenant_id):
                        await db.execute(
                            update(ProvisioningRun)
                            .where(ProvisioningRun.id == run_id, ProvisioningRun.lease_owner == self.owner)
                            .values(lease_until=utcnow() + self.lease)
                            .execution_options(synchronize_session=False)
                        )
                        await db.commit()

    async def advance(self, run_id: str, tenant_id: str) -> str:
        """Execute the run's remaining steps in this process; returns the run's status when it stops here."""
        async with self.sessionmaker() as db:
            with tenant_scope(tenant_id):
                if not await self._take_lease(db, run_id):
                    run = await db.get(ProvisioningRun, run_id)
                    if run is None or run.status not in ("queued", "running"):
                        return run.status if run else "missing"
                    # Another process holds the lease; if it died, the lease runs out: look again then.
                    wait = (run.lease_until - utcnow()).total_seconds() if run.lease_until else 1.0
                    await self.kick(run_id, tenant_id, delay=max(0.1, wait + 0.05))
                    return run.status
                renewal = asyncio.create_task(self._renew(run_id, tenant_id))
                try:
                    return await self._steps(db, run_id)
                finally:
                    renewal.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renewal

    async def _steps(self, db: AsyncSession, run_id: str) -> str:
        while True:
            db.expire_all()
            run = await db.get(ProvisioningRun, run_id)
            assert run is not None
            steps = list(
                (
                    await db.scalars(
                        select(ProvisioningStep)
                        .where(ProvisioningStep.run_id == run_id)
                        .order_by(ProvisioningStep.position)
                    )
                ).all()
            )
            step = next((s for s in steps if s.status not in ("succeeded", "skipped")), None)
            now = utcnow()
            if step is None:
                run.status, run.finished_at, run.error = "succeeded", now, None
                run.lease_owner, run.lease_until = None, None
                await db.commit()
                log.info("provisioning_run_succeeded", run_id=run.id, operation=run.operation, tenant_id=run.tenant_id)
                return run.status
            if step.status == "retrying" and step.next_attempt_at and step.next_attempt_at > now:
                run.lease_owner, run.lease_until = None, None
                await db.commit()
                await self.kick(run.id, run.tenant_id, delay=(step.next_attempt_at - now).total_seconds())
                return run.status
            step.status, step.started_at, step.next_attempt_at = "running", now, None
            step.attempts += 1
            run.lease_until = now + self.lease
            await db.commit()
            context = StepContext(
                run_id=run.id,
                tenant_id=run.tenant_id,
                operation=run.operation,
                driver=run.driver,
                template=run.template,
                template_version=run.template_version,
                params=dict(run.params),
                attempt=step.attempts,
                outputs={s.name: dict(s.outputs) for s in steps if s.status == "succeeded"},
                undone=await self._undone(db, run),
                db=db,
            )
            step_id, handler = step.id, self.handlers[step.name]
            try:
                outputs = await handler(context)
            except Exception as exc:
                # NOTE: only plain values from here on: the rollback expires every loaded row.
                await db.rollback()
                failed = await self._step_failed(db, run_id, step_id, exc)
                if failed is not None:
                    return failed
                continue
            step = await db.get(ProvisioningStep, step_id)
            assert step is not None
            step.status, step.outputs, step.error, step.finished_at = "succeeded", outputs or {}, None, utcnow()
            await db.commit()
            log.info("provisioning_step_succeeded", run_id=run_id, step=step.name, attempt=step.attempts)

    async def _undone(self, db: AsyncSession, run: ProvisioningRun) -> dict[str, dict[str, Any]]:
        if not run.rollback_of:
            return {}
        rows = await db.scalars(
            select(ProvisioningStep).where(
                ProvisioningStep.run_id == run.rollback_of, ProvisioningStep.status == "succeeded"
            )
        )
        return {s.name: dict(s.outputs) for s in rows}

    async def _step_failed(self, db: AsyncSession, run_id: str, step_id: str, exc: Exception) -> str | None:
        """Record the error; retry later (None after scheduling it) or fail the run (its status)."""
        db.expire_all()
        run = await db.get(ProvisioningRun, run_id)
        step = await db.get(ProvisioningStep, step_id)
        assert run is not None and step is not None
        message = _describe(exc)
        now = utcnow()
        step.error = message
        if isinstance(exc, StepFailed) or step.attempts >= self.max_attempts:
            step.status, step.finished_at = "failed", now
            run.status, run.finished_at, run.error = "failed", now, f"{step.name}: {message}"
            run.lease_owner, run.lease_until = None, None
            if self.on_failed is not None:
                await self.on_failed(db, run)
            await db.commit()
            log.warning("provisioning_run_failed", run_id=run.id, step=step.name, error=message)
            return run.status
        delay = min(self.max_backoff, self.backoff * 2 ** (step.attempts - 1))
        step.status, step.next_attempt_at = "retrying", now + dt.timedelta(seconds=delay)
        run.lease_owner, run.lease_until = None, None
        await db.commit()
        log.info("provisioning_step_retrying", run_id=run.id, step=step.name, attempt=step.attempts, delay=delay)
        await self.kick(run.id, run.tenant_id, delay=delay)
        return run.status

    # --- operator actions -------------------------------------------------------------------

    async def retry(self, db: AsyncSession, run: ProvisioningRun) -> None:
        """Put a failed run back in the queue from its failed step, with fresh attempts (caller commits, then kicks)."""
        steps = await db.scalars(
            select(ProvisioningStep).where(ProvisioningStep.run_id == run.id, ProvisioningStep.status == "failed")
        )
        for step in steps:
            step.status, step.attempts, step.next_attempt_at, step.finished_at = "pending", 0, None, None
        run.status, run.finished_at, run.error = "queued", None, None
