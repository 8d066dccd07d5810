"""Conformance suite for the jobs port, run against the in-process runner and the Redis queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from kernel.errors import ConfigError
from kernel.ports.jobs import JobQueue, RedisJobQueue, jobs_drivers

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def jobs_config(request: pytest.FixtureRequest) -> tuple[str, str | None, str]:
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url"), request.getfixturevalue("unique_prefix")
    return "memory", None, "livora:"


async def _drop_prefix(url: str, prefix: str) -> None:
    raw = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
    finally:
        await raw.aclose()


@pytest.fixture
async def jobs(jobs_config: tuple[str, str | None, str]) -> AsyncIterator[JobQueue]:
    name, url, prefix = jobs_config
    queue = jobs_drivers.create(name, redis_url=url, prefix=prefix, lease_seconds=1.0)
    yield queue
    await queue.close()
    if url:
        await _drop_prefix(url, prefix)


async def test_a_job_runs_with_its_payload(jobs: JobQueue) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(payload: dict[str, Any]) -> None:
        seen.append(payload)

    jobs.register("greet", handler)
    await jobs.start()
    job_id = await jobs.enqueue("greet", {"name": "Ana", "n": [1, 2]})
    assert await jobs.idle(5)
    assert seen == [{"name": "Ana", "n": [1, 2]}]
    status = await jobs.status(job_id)
    assert status is not None and (status.state, status.tries, status.error) == ("done", 1, None)
    assert await jobs.status("job_unknown") is None


async def test_a_queued_id_is_queued_once_and_can_run_again_later(jobs: JobQueue) -> None:
    runs: list[int] = []

    async def handler(payload: dict[str, Any]) -> None:
        runs.append(payload["n"])

    jobs.register("once", handler)
    first = await jobs.enqueue("once", {"n": 1}, job_id="run:1", delay=0.2)
    again = await jobs.enqueue("once", {"n": 2}, job_id="run:1")
    assert first == again == "run:1"
    await jobs.start()
    assert await jobs.idle(5)
    assert runs == [1]
    await jobs.enqueue("once", {"n": 3}, job_id="run:1")
    assert await jobs.idle(5)
    assert runs == [1, 3]


async def test_delay_is_honoured(jobs: JobQueue) -> None:
    at: list[float] = []

    async def handler(payload: dict[str, Any]) -> None:
        at.append(time.monotonic())

    jobs.register("later", handler)
    await jobs.start()
    started = time.monotonic()
    await jobs.enqueue("later", {}, delay=0.4)
    await asyncio.sleep(0.2)
    assert at == []
    assert await jobs.idle(5)
    assert at and at[0] - started >= 0.39


async def test_failures_are_retried_with_backoff_then_fail_with_the_error(jobs: JobQueue) -> None:
    tries: list[float] = []

    async def flaky(payload: dict[str, Any]) -> None:
        tries.append(time.monotonic())
        if len(tries) < payload["succeed_on"]:
            raise RuntimeError(f"try {len(tries)} failed")

    async def broken(payload: dict[str, Any]) -> None:
        raise ValueError("always broken")

    jobs.register("flaky", flaky, max_tries=3, backoff=0.1)
    jobs.register("broken", broken, max_tries=2, backoff=0.05)
    await jobs.start()
    ok = await jobs.enqueue("flaky", {"succeed_on": 3})
    bad = await jobs.enqueue("broken", {})
    assert await jobs.idle(10)
    assert len(tries) == 3
    # Backoff doubles: ~0.1 s then ~0.2 s between tries.
    assert tries[1] - tries[0] >= 0.09 and tries[2] - tries[1] >= 0.19
    done = await jobs.status(ok)
    failed = await jobs.status(bad)
    assert done is not None and (done.state, done.tries) == ("done", 3)
    assert failed is not None and (failed.state, failed.tries) == ("failed", 2)
    assert failed.error == "ValueError: always broken"


async def test_jobs_run_concurrently(jobs: JobQueue) -> None:
    active = 0
    peak = 0

    async def slow(payload: dict[str, Any]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.2)
        active -= 1

    jobs.register("slow", slow)
    await jobs.start()
    for i in range(4):
        await jobs.enqueue("slow", {"i": i})
    started = time.monotonic()
    assert await jobs.idle(5)
    assert peak >= 2 and time.monotonic() - started < 0.75


async def test_unknown_job_names_and_drivers_are_refused(jobs: JobQueue) -> None:
    with pytest.raises(ValueError, match="no job handler"):
        await jobs.enqueue("nobody", {})
    with pytest.raises(ConfigError) as caught:
        jobs_drivers.create("carrier-pigeon")
    assert "memory" in str(caught.value) and "redis" in str(caught.value)


@pytest.mark.redis
async def test_a_job_whose_worker_died_is_taken_again_after_its_lease(redis_url: str, unique_prefix: str) -> None:
    """A worker that stops renewing (killed) loses the job when the lease runs out; another runs it."""
    started = asyncio.Event()
    done = asyncio.Event()
    finished: list[str] = []

    async def hangs(payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(3600)

    async def works(payload: dict[str, Any]) -> None:
        finished.append(payload["step"])
        done.set()

    dying = RedisJobQueue(redis_url, prefix=unique_prefix, lease_seconds=0.5)
    dying.register("provision", hangs)
    survivor = RedisJobQueue(redis_url, prefix=unique_prefix, lease_seconds=0.5)
    survivor.register("provision", works)
    try:
        await dying.start()
        job_id = await dying.enqueue("provision", {"step": "create_space"})
        await asyncio.wait_for(started.wait(), 5)
        # Kill the worker: its tasks stop, nothing is recorded, the lease is no longer renewed.
        for task in dying._workers:
            task.cancel()
        await asyncio.gather(*dying._workers, return_exceptions=True)
        dying._workers = []
        await survivor.start()
        await asyncio.wait_for(done.wait(), 5)
        assert finished == ["create_space"]
        status = await survivor.status(job_id)
        assert status is not None and status.state == "done" and status.tries == 2
    finally:
        await survivor.close()
        await dying.close()
        await _drop_prefix(redis_url, unique_prefix)
