"""Jobs port: named handlers run in the background, with delays, retries with backoff, and one id per job.

Two drivers pass one conformance suite (``tests/contract/test_jobs.py``):

- ``memory``: an in-process runner on the event loop (the embedded mode). Jobs live in memory:
  whoever enqueues durable work keeps its state elsewhere and enqueues it again at start-up.
- ``redis``: a queue in Redis shared by every process (the production mode). A job taken by a
  worker holds a lease that the worker renews while it runs; a worker that dies stops renewing,
  and another takes the job again when the lease runs out.

Semantics shared by both:

- ``enqueue(name, payload, job_id=…)`` adds a job; while a job with that id waits in the queue, a
  second enqueue with the id adds nothing (it answers the same id). A running or finished id can
  be enqueued again: the caller's own state says whether that work still has to be done.
- A handler that raises is tried again after ``backoff * 2**(try-1)`` seconds (at most
  ``max_backoff``), up to ``max_tries`` tries; then the job is ``failed`` with the error text.
- Delivery is at least once: handlers must be idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from kernel.errors import ConfigError, Unavailable
from kernel.logging import get_logger
from kernel.registry import DriverRegistry

log = get_logger("livora.jobs")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
JobState = Literal["queued", "running", "done", "failed"]


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    state: JobState
    tries: int
    error: str | None = None


@dataclass(frozen=True)
class JobSpec:
    handler: Handler
    max_tries: int
    backoff: float
    max_backoff: float

    def delay_after(self, tries: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** max(0, tries - 1)))


class JobQueue(Protocol):
    def register(
        self, name: str, handler: Handler, *, max_tries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0
    ) -> None:
        """Declare the handler of jobs called ``name`` (before ``start``)."""
        ...

    async def enqueue(
        self, name: str, payload: dict[str, Any], *, job_id: str | None = None, delay: float = 0.0
    ) -> str:
        """Queue a job to run after ``delay`` seconds; returns its id. Raises ``Unavailable`` when the queue is down."""
        ...

    async def status(self, job_id: str) -> JobStatus | None:
        """What became of a job (finished jobs are remembered for a while)."""
        ...

    async def start(self) -> None:
        """Start running jobs in this process."""
        ...

    async def idle(self, within: float) -> bool:
        """Wait until no job is queued or running; False when ``within`` seconds pass first."""
        ...

    async def close(self) -> None:
        """Stop taking jobs, let running handlers finish, release connections."""
        ...


def _new_id() -> str:
    return f"job_{secrets.token_hex(10)}"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


class _Registry:
    def __init__(self) -> None:
        self._specs: dict[str, JobSpec] = {}

    def register(
        self, name: str, handler: Handler, *, max_tries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0
    ) -> None:
        if max_tries < 1 or backoff < 0:
            raise ValueError("max_tries must be at least 1 and backoff not negative")
        self._specs[name] = JobSpec(handler, max_tries, backoff, max_backoff)

    def spec(self, name: str) -> JobSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ValueError(f"no job handler registered for {name!r}") from None


class MemoryJobQueue(_Registry):
    """The embedded runner: a timed heap and ``concurrency`` worker tasks on the running loop."""

    def __init__(self, *, concurrency: int = 4, keep_finished: int = 10_000) -> None:
        super().__init__()
        self._concurrency = concurrency
        self._keep = keep_finished
        self._heap: list[tuple[float, int, str]] = []
        self._jobs: dict[str, dict[str, Any]] = {}
        self._finished: list[str] = []
        self._seq = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self._closing = False

    def _event(self) -> asyncio.Event:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup

    async def enqueue(
        self, name: str, payload: dict[str, Any], *, job_id: str | None = None, delay: float = 0.0
    ) -> str:
        self.spec(name)
        job_id = job_id or _new_id()
        existing = self._jobs.get(job_id)
        if existing is not None and existing["state"] == "queued":
            return job_id
        payload = msgspec.json.decode(msgspec.json.encode(payload))  # what Redis would hand back
        self._jobs[job_id] = {"name": name, "payload": payload, "state": "queued", "tries": 0, "error": None}
        heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), job_id))
        self._event().set()
        return job_id

    async def status(self, job_id: str) -> JobStatus | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        return JobStatus(id=job_id, name=job["name"], state=job["state"], tries=job["tries"], error=job["error"])

    async def start(self) -> None:
        if self._workers:
            return
        self._closing = False
        self._workers = [asyncio.create_task(self._work(), name=f"jobs-worker-{i}") for i in range(self._concurrency)]

    def _next_due(self) -> tuple[str | None, float]:
        """A due job id (popped), or None and the seconds until the next one is due."""
        while self._heap:
            due, _, job_id = self._heap[0]
            job = self._jobs.get(job_id)
            if job is None or job["state"] != "queued":
                heapq.heappop(self._heap)
                continue
            wait = due - time.monotonic()
            if wait > 0:
                return None, wait
            heapq.heappop(self._heap)
            return job_id, 0.0
        return None, 3600.0

    async def _work(self) -> None:
        wakeup = self._event()
        while not self._closing:
            job_id, wait = self._next_due()
            if job_id is None:
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=min(wait, 1.0))
                continue
            job = self._jobs[job_id]
            spec = self.spec(job["name"])
            job["state"] = "running"
            job["tries"] += 1
            self._running += 1
            try:
                await spec.handler(job["payload"])
            except asyncio.CancelledError:
                job["state"] = "queued"
                raise
            except Exception as exc:
                job["error"] = _error_text(exc)
                log.warning("job_failed", job_id=job_id, job=job["name"], tries=job["tries"], error=job["error"])
                if job["tries"] < spec.max_tries:
                    job["state"] = "queued"
                    due = time.monotonic() + spec.delay_after(job["tries"])
                    heapq.heappush(self._heap, (due, next(self._seq), job_id))
                    wakeup.set()
                else:
                    job["state"] = "failed"
                    self._remember(job_id)
            else:
                job["state"] = "done"
                job["error"] = None
                self._remember(job_id)
            finally:
                self._running -= 1

    def _remember(self, job_id: str) -> None:
        self._finished.append(job_id)
        while len(self._finished) > self._keep:
            old = self._finished.pop(0)
            if self._jobs.get(old, {}).get("state") in ("done", "failed"):
                del self._jobs[old]

    async def idle(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while True:
            busy = self._running or any(job["state"] == "queued" for job in self._jobs.values())
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        workers, self._workers = self._workers, []
        # Let a handler that is running finish its step; then stop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), timeout=10)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


# --- Redis ---------------------------------------------------------------------------------

# KEYS: queue zset, job hash. ARGV: job id, name, payload, due (ms). Adds unless already queued.
_ENQUEUE = """
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'queued' then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'name', ARGV[2], 'payload', ARGV[3], 'state', 'queued', 'tries', 0)
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""

# KEYS: queue zset, running zset. ARGV: now (ms), lease deadline (ms), job key prefix.
# Requeues jobs whose lease ran out (their worker died), then takes the first due job.
_TAKE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HSET', ARGV[3] .. id, 'state', 'queued')
  redis.call('ZADD', KEYS[1], ARGV[1], id)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return nil end
local id = due[1]
redis.call('ZREM', KEYS[1], id)
redis.call('ZADD', KEYS[2], ARGV[2], id)
redis.call('HSET', ARGV[3] .. id, 'state', 'running')
local tries = redis.call('HINCRBY', ARGV[3] .. id, 'tries', 1)
return {id, redis.call('HGET', ARGV[3] .. id, 'name'), redis.call('HGET', ARGV[3] .. id, 'payload'), tries}
"""

# KEYS: running zset, job hash. ARGV: id, worker's lease deadline (ms). Renews only a lease it holds.
_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: running zset, job hash, queue zset. ARGV: id, outcome, error, retry due (ms) or '', keep (s).
_FINISH = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == 'retry' then
  redis.call('HSET', KEYS[2], 'state', 'queued', 'error', ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'state', ARGV[2], 'error', ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return 1
"""


class RedisJobQueue(_Registry):
    """Jobs in Redis: a due-time sorted set, a lease sorted set, a hash per job. Every process may work."""

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "livora:",
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.05,
        keep_finished_seconds: int = 7 * 24 * 3600,
    ) -> None:
        super().__init__()
        self._redis = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        self._queue = f"{prefix}jobs:queue"
        self._running_key = f"{prefix}jobs:running"
        self._job_prefix = f"{prefix}jobs:job:"
        self._concurrency = concurrency
        self._lease_ms = int(lease_seconds * 1000)
        self._poll = poll_seconds
        self._keep = keep_finished_seconds
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        self._enqueue = self._redis.register_script(_ENQUEUE)
        self._take = self._redis.register_script(_TAKE)
        self._renew = self._redis.register_script(_RENEW)
        self._finish = self._redis.register_script(_FINISH)

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    @contextlib.asynccontextmanager
    async def _translated(self, operation: str) -> Any:
        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise Unavailable(
                f"the job queue (Redis) is unreachable during {operation}: {exc}", code="jobs_unavailable"
            ) from None

    async def enqueue(
        self, name: str, payload: dict[str, Any], *, job_id: str | None = None, delay: float = 0.0
    ) -> str:
        self.spec(name)
        job_id = job_id or _new_id()
        due = self._now_ms() + int(max(0.0, delay) * 1000)
        async with self._translated("enqueue"):
            await self._enqueue(
                keys=[self._queue, self._job_prefix + job_id],
                args=[job_id, name, msgspec.json.encode(payload), due],
            )
        return job_id

    async def status(self, job_id: str) -> JobStatus | None:
        async with self._translated("status"):
            raw = await self._redis.hgetall(self._job_prefix + job_id)
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return JobStatus(
            id=job_id,
            name=fields["name"],
            state=fields["state"],  # type: ignore[arg-type]
            tries=int(fields.get("tries", 0)),
            error=fields.get("error") or None,
        )

    async def start(self) -> None:
        if self._workers:
            return
        self._closing = False
        self._workers = [
            asyncio.create_task(self._work(), name=f"jobs-redis-worker-{i}") for i in range(self._concurrency)
        ]

    async def _work(self) -> None:
        while not self._closing:
            try:
                now = self._now_ms()
                taken = await self._take(
                    keys=[self._queue, self._running_key], args=[now, now + self._lease_ms, self._job_prefix]
                )
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
                await asyncio.sleep(1.0)  # Redis is down: keep trying, jobs wait in Redis
                continue
            if not taken:
                await asyncio.sleep(self._poll)
                continue
            job_id, name, payload, tries = taken[0].decode(), taken[1].decode(), taken[2], int(taken[3])
            await self._run(job_id, name, msgspec.json.decode(payload), tries)

    async def _keep_lease(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await self._renew(
                    keys=[self._running_key, self._job_prefix + job_id], args=[job_id, self._now_ms() + self._lease_ms]
                )

    async def _run(self, job_id: str, name: str, payload: dict[str, Any], tries: int) -> None:
        try:
            spec = self.spec(name)
        except ValueError as exc:
            await self._finish_job(job_id, "failed", str(exc), "")
            return
        lease = asyncio.create_task(self._keep_lease(job_id))
        try:
            await spec.handler(payload)
        except asyncio.CancelledError:
            raise  # the lease lapses and another worker takes the job again
        except Exception as exc:
            log.warning("job_failed", job_id=job_id, job=name, tries=tries, error=_error_text(exc))
            if tries < spec.max_tries:
                due = self._now_ms() + int(spec.delay_after(tries) * 1000)
                await self._finish_job(job_id, "retry", _error_text(exc), str(due))
            else:
                await self._finish_job(job_id, "failed", _error_text(exc), "")
        else:
            await self._finish_job(job_id, "done", "", "")
        finally:
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease

    async def _finish_job(self, job_id: str, outcome: str, error: str, due: str) -> None:
        for attempt in range(5):
            try:
                await self._finish(
                    keys=[self._running_key, self._job_prefix + job_id, self._queue],
                    args=[job_id, outcome, error, due or "0", self._keep],
                )
                return
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
                await asyncio.sleep(0.2 * 2**attempt)
        # Not recorded: the lease lapses and the job runs again (handlers are idempotent).

    async def idle(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while True:
            async with self._translated("idle"):
                busy = await self._redis.zcard(self._queue) + await self._redis.zcard(self._running_key)
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._closing = True
        workers, self._workers = self._workers, []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), timeout=10)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await self._redis.aclose()


jobs_drivers: DriverRegistry[JobQueue] = DriverRegistry[JobQueue]("jobs", "LIVORA_JOBS_DRIVER")


@jobs_drivers.register("memory")
def _memory(*, redis_url: str | None = None, prefix: str = "livora:", **options: Any) -> JobQueue:
    del redis_url, prefix
    options.pop("lease_seconds", None)
    return MemoryJobQueue(**options)


@jobs_drivers.register("redis")
def _redis(*, redis_url: str | None = None, prefix: str = "livora:", **options: Any) -> JobQueue:
    if not redis_url:
        raise ConfigError("LIVORA_REDIS_URL", "required when LIVORA_JOBS_DRIVER=redis")
    return RedisJobQueue(redis_url, prefix=prefix, **options)
