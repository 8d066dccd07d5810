"""Pipeline worker benchmark: events/s from a filled stream into the lake, one or more worker processes.

    .venv/bin/python bench/worker.py [--events 40000] [--per-request 100] [--workers 1,2] [--users 5000]
                                     [--single] [--json]

The embedded stream (the SQLite log) is filled first with ``--events`` track events the way
ingestion appends them: one entry per (request of ``--per-request`` events, partition);
``--single`` appends one event per entry, as a JSON object (entries of older cells). Then ``N`` worker processes
(``livora worker`` with ``LIVORA_WORKER_SHARD=i/N``) drain it, everything on: dedup, enrichment,
profiles, sessions, lake, usage ledger. The figure is events / wall time from the workers' start
until every entry is acked (process start-up included, about a second), and the CPU the worker
processes used per event (start-up included; the figure that a busy machine disturbs least;
``cpu * events/s`` above the cores available means the run was short of CPU). Each ``--workers`` value
runs on a fresh cell directory over the same events. On a shared machine compare the figures of
one run with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_plane.events import Event, encode_entry, encode_event
from data_plane.stream.log import LogStream
from data_plane.stream.port import DEFAULT_PARTITIONS, Record, partition_for

TENANT = "ten_bench"
GROUP = "pipeline"


def _events(count: int, users: int) -> list[Event]:
    now = dt.datetime.now(dt.UTC)
    agents = [f"Mozilla/5.0 (X11; Linux x86_64) Chrome/{120 + i}.0" for i in range(20)]
    return [
        Event(
            message_id=str(uuid.uuid4()),
            tenant_id=TENANT,
            source_id="src_bench",
            type="track",
            event=f"Event {i % 12}",
            received_at=now,
            timestamp=now - dt.timedelta(milliseconds=count - i),
            user_id=f"user-{i % users}",
            anonymous_id=f"anon-{i % users}",
            properties={"revenue": 9.5, "sku": f"sku-{i % 97}"},
            context={
                "ip": f"8.8.{i % 64}.{i % 200}",
                "userAgent": agents[i % len(agents)],
                "page": {"url": f"https://shop.example.com/p/{i % 300}?utm_source=news", "referrer": ""},
            },
        )
        for i in range(count)
    ]


def _records(events: list[Event], per_request: int, single: bool) -> list[Record]:
    if single:
        return [Record(f"{e.tenant_id}/{e.partition_key}", encode_event(e)) for e in events]
    records = []
    for start in range(0, len(events), per_request):
        by_partition: dict[int, list[Event]] = {}
        for event in events[start : start + per_request]:
            key = f"{event.tenant_id}/{event.partition_key}"
            by_partition.setdefault(partition_for(key, DEFAULT_PARTITIONS), []).append(event)
        records += [Record(f"{g[0].tenant_id}/{g[0].partition_key}", encode_entry(g)) for g in by_partition.values()]
    return records


async def _fill(path: Path, records: list[Record]) -> None:
    stream = LogStream(path)
    try:
        for start in range(0, len(records), 2000):
            await stream.append(records[start : start + 2000])
    finally:
        await stream.close()


def _remaining(path: Path, entries: int) -> int:
    """Entries not acked yet: never read, or pending (read straight from the log's tables)."""
    with sqlite3.connect(path, timeout=30) as conn:
        read = conn.execute("SELECT COALESCE(SUM(last_seq), 0) FROM cursors WHERE grp = ?", (GROUP,)).fetchone()[0]
        if not read:
            return entries
        unread = conn.execute(
            "SELECT count(*) FROM entries e JOIN cursors c ON c.grp = ? AND c.partition = e.partition "
            "WHERE e.seq > c.last_seq",
            (GROUP,),
        ).fetchone()[0]
        pending = conn.execute("SELECT count(*) FROM pending WHERE grp = ?", (GROUP,)).fetchone()[0]
        return int(unread + pending)


def run(workers: int, records: list[Record], events: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="livora-bench-worker-"))
    stream_path = root / "cell" / "stream.db"
    stream_path.parent.mkdir(parents=True)
    asyncio.run(_fill(stream_path, records))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIVORA_")},
        "LIVORA_DATA_DIR": str(root),
        "LIVORA_STREAM_LOG_PATH": str(stream_path),
        "LIVORA_LOG_LEVEL": "warning",
        # The last events would otherwise wait the default 5 s for the lake, a large part of a short run.
        "LIVORA_LAKE_FLUSH_SECONDS": "0.5",
    }
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "livora", "worker"],
            env={**env, "LIVORA_WORKER_SHARD": f"{i}/{workers}"} if workers > 1 else env,
            stdout=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    try:
        while _remaining(stream_path, len(records)):
            for process in processes:
                if process.poll() is not None:
                    raise SystemExit(f"a worker exited with {process.returncode}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "workers": workers,
        "events": events,
        "entries": len(records),
        "seconds": round(elapsed, 2),
        "events_per_s": round(events / elapsed),
        "cpu_us_per_event": round(cpu / events * 1e6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--per-request", type=int, default=100)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--workers", default="1,2", help="worker process counts to run, e.g. 1,2")
    parser.add_argument("--single", action="store_true", help="one event per stream entry")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records = _records(_events(args.events, args.users), args.per_request, args.single)
    results = [run(int(n), records, args.events) for n in args.workers.split(",")]
    if args.json:
        print(json.dumps(results))
        return 0
    base = results[0]["events_per_s"]
    print(f"{'workers':>7}  {'events':>7}  {'entries':>7}  {'seconds':>7}  {'events/s':>9}  ratio  cpu µs/event")
    for row in results:
        ratio = row["events_per_s"] / base  # type: ignore[operator]
        print(
            f"{row['workers']:>7}  {row['events']:>7}  {row['entries']:>7}  {row['seconds']:>7}  "
            f"{row['events_per_s']:>9}  {ratio:5.2f}  {row['cpu_us_per_event']:>12}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
