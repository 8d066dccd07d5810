"""Profile store benchmark: µs per event for ``apply``, session load/save and dedup, per driver.

    .venv/bin/python bench/profiles.py [--batches 5] [--batch-size 1000] [--backends sqlite,postgres]
                                       [--dedup sqlite,redis] [--json]

One tenant, batches of enriched track events the way the pipeline worker hands them over (geo,
parsed user agent and IP in the context; one user id and one anonymous id each):

- ``apply new``: every event names a user never seen (a profile and two identities are created);
- ``apply returning``: the same users again, new message ids (their profiles are updated);
- ``apply redelivered``: a batch applied before, again (idempotence: nothing is written);
- ``sessions save`` / ``sessions load``: one persisted session state per profile of a batch;
- ``dedup``: ``Deduplicator.filter_new`` over a batch of first sightings, then the same batch again.

Figures are µs per event over ``--batches`` batches: wall clock (the best batch and the median)
and this process's CPU (median; it includes SQLite's thread), plus the PostgreSQL backend's CPU
when the server runs on this machine (``/proc/<pid>/schedstat``).
On a shared machine compare the figures of one run with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POSTGRES_URL = os.environ.get("LIVORA_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LIVORA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def make_events(tenant_id: str, users: range, batch: int):
    from data_plane.events import Event

    return [
        Event(
            message_id=f"m{batch}_{n}",
            tenant_id=tenant_id,
            source_id="src_bench",
            type="track",
            event="Product Viewed",
            received_at=T0 + dt.timedelta(seconds=batch),
            timestamp=T0 + dt.timedelta(seconds=batch, microseconds=n),
            user_id=f"user_{n}",
            anonymous_id=f"anon_{n}",
            properties={"product_id": f"p{n % 50}", "price": 19.5},
            context={
                "ip": "203.0.113.0",
                "geo": {"country": "NO", "city": "Oslo"},
                "user_agent_parsed": {"browser": "Firefox", "os": "Linux", "device": "desktop"},
                "library": {"name": "livora.js", "version": "1.0.0"},
            },
        )
        for n in users
    ]


APPLICATION = f"livora_bench_{os.getpid()}"


class ServerCpu:
    """CPU time of this benchmark's PostgreSQL backends (``application_name``), read from
    ``/proc/<pid>/schedstat``: only when the server runs on this machine and is readable."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    async def find(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(POSTGRES_URL)
        try:
            rows = await connection.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", APPLICATION)
        finally:
            await connection.close()
        self.pids = [row[0] for row in rows]

    def seconds(self) -> float | None:
        try:
            return sum(int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) for pid in self.pids) / 1e9
        except (OSError, ValueError, IndexError):
            return None


Run = tuple[float, float, float | None]


async def timed(runs: list[Run], work: Callable[[], Awaitable[object]], server: ServerCpu | None = None) -> None:
    before = server.seconds() if server else None
    started, cpu = time.perf_counter(), time.process_time()
    await work()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = server.seconds() if server else None
    runs.append((wall, cpu, after - before if before is not None and after is not None else None))


def figure(name: str, runs: list[Run], per: int) -> dict[str, object]:
    walls = [wall for wall, _, _ in runs]
    servers = [s for _, _, s in runs if s is not None]
    return {
        "name": name,
        "best_us_per_event": round(min(walls) / per * 1e6, 1),
        "median_us_per_event": round(statistics.median(walls) / per * 1e6, 1),
        # This process's CPU (every thread, so SQLite's work too) and the PostgreSQL backend's:
        # steadier than wall time on a busy machine, and what the two cores are really spent on.
        "median_cpu_us_per_event": round(statistics.median(cpu for _, cpu, _ in runs) / per * 1e6, 1),
        "median_server_cpu_us_per_event": round(statistics.median(servers) / per * 1e6, 1) if servers else None,
        "batches": len(runs),
        "batch_size": per,
    }


async def bench_store(backend: str, batches: int, size: int, root: Path) -> list[dict[str, object]]:
    from data_plane.profiles.postgres import PostgresProfileStore
    from data_plane.profiles.sqlite import SqliteProfileStore

    server: ServerCpu | None = None
    if backend == "sqlite":
        store = SqliteProfileStore(root / backend)
    else:
        # One connection, named, so the server's CPU can be read per backend process.
        store = PostgresProfileStore(
            POSTGRES_URL, pool_size=1, connect_args={"server_settings": {"application_name": APPLICATION}}
        )
        server = ServerCpu()
    tenant = f"ten_bench_{uuid.uuid4().hex[:8]}"
    new: list[Run] = []
    returning: list[Run] = []
    again: list[Run] = []
    save: list[Run] = []
    load: list[Run] = []
    try:
        await store.ensure_tenant(tenant)
        if server:
            await server.find()
        for b in range(batches):
            users = range(b * size, (b + 1) * size)
            first = make_events(tenant, users, b)
            await timed(new, lambda first=first: store.apply(tenant, first), server)
            later = make_events(tenant, users, batches + b)
            await store.apply(tenant, later[:1])  # one event: the batch below is all returning people
            await timed(returning, lambda later=later: store.apply(tenant, later), server)
            await timed(again, lambda later=later: store.apply(tenant, later), server)
            states = {f"prof_{n}": b"\x91\x94\xd9$ses_" + str(n).encode() + b"\x00\x00\x00" for n in users}
            await timed(save, lambda states=states: store.save_sessions(tenant, states), server)
            await timed(load, lambda states=states: store.load_sessions(tenant, list(states)), server)
    finally:
        await store.drop_tenant(tenant)
        await store.close()
    return [
        {"backend": backend, **figure("apply new", new, size)},
        {"backend": backend, **figure("apply returning", returning, size)},
        {"backend": backend, **figure("apply redelivered", again, size)},
        {"backend": backend, **figure("sessions save", save, size)},
        {"backend": backend, **figure("sessions load", load, size)},
    ]


async def bench_dedup(driver: str, batches: int, size: int, root: Path) -> list[dict[str, object]]:
    from data_plane.pipeline.dedup import Deduplicator, Sighting, dedup_drivers

    store = dedup_drivers.create(driver, sqlite_path=str(root / "dedup.db"), redis_url=REDIS_URL, prefix="bench:")
    dedup = Deduplicator(store)
    tenant = f"ten_bench_{uuid.uuid4().hex[:8]}"
    first: list[Run] = []
    repeat: list[Run] = []
    try:
        for b in range(batches):
            sightings = [Sighting(tenant, f"m{b}_{n}", T0, f"1-{b}") for n in range(size)]
            await timed(first, lambda s=sightings: dedup.filter_new(s))
            again = [s._replace(delivery=None) for s in sightings]  # not a redelivery: duplicates
            await timed(repeat, lambda s=again: dedup.filter_new(s))
    finally:
        await store.forget_tenant(tenant)
        await dedup.close()
    return [
        {"backend": f"dedup {driver}", **figure("filter_new first", first, size)},
        {"backend": f"dedup {driver}", **figure("filter_new repeat", repeat, size)},
    ]


async def main(args: argparse.Namespace) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in filter(None, args.backends.split(",")):
            results += await bench_store(backend, args.batches, args.batch_size, Path(tmp))
        for driver in filter(None, args.dedup.split(",")):
            results += await bench_dedup(driver, args.batches, args.batch_size, Path(tmp))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--dedup", default="sqlite,redis")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args()
    found = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps(found, indent=2))
    else:
        print(
            f"{'backend':<14} {'figure':<20} {'best µs/event':>14} {'median µs/event':>16} {'median CPU µs':>14}"
            f" {'server CPU µs':>14}"
        )
        for row in found:
            server = row["median_server_cpu_us_per_event"]
            print(
                f"{row['backend']:<14} {row['name']:<20} {row['best_us_per_event']:>14}"
                f" {row['median_us_per_event']:>16} {row['median_cpu_us_per_event']:>14} {server or '':>14}"
            )
