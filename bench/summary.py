"""Every benchmark in one table: each figure beside its target and beside its peer measured in the same run.

    .venv/bin/python bench/summary.py [--quick] [--events N] [--json]

Runs ``bench/ingest.py`` (acks, latency at a fixed offered rate and end to end, per stream driver,
beside the decode-only ceiling endpoint), ``bench/worker.py`` (one and two pipeline worker
processes) and ``bench/analytics.py`` (every query beside ClickHouse, embedded ``chdb``, over the
same generated lake), each in its own process, one after the other so none disturbs another, and
prints one table. A peer's ratio reads "how many times the peer we are": above 1 is better than
the peer (faster than ClickHouse, more acks than the ceiling would be impossible). ``--quick`` is
a short run for a look (5 s phases, 1 M analytics events); the default is the issue's figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_json(script: str, *args: str) -> object:
    """Run one bench script with ``--json`` and decode its last line of output."""
    print(f"running bench/{script} {' '.join(args)} …", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, str(HERE / script), *args, "--json"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"bench/{script} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(figure: str, value: float, unit: str, target: float | None, higher: bool, peer: tuple[str, float] | None):
    ok = None if target is None else (value >= target if higher else value <= target)
    ratio = None
    if peer is not None and peer[1] and value:
        # "times the peer": above 1 is better, whichever way the figure points.
        ratio = value / peer[1] if higher else peer[1] / value
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "target": target,
        "higher_is_better": higher,
        "met": ok,
        "peer": peer[0] if peer else None,
        "peer_value": peer[1] if peer else None,
        "ratio_to_peer": ratio,
    }


def ingest_rows(results: dict) -> list[dict]:
    targets = results["targets"]
    ceiling = results.get("ceiling", {}).get("events_per_s")
    rows = []
    for figures in results["drivers"]:
        driver, workers = figures["driver"], figures["workers"]
        acks = figures["acks"]
        rows.append(
            _row(
                f"acks/s, {driver} stream, {workers} ingest process(es)",
                acks["events_per_s"],
                "events/s",
                targets.get(f"acks_{driver}"),
                True,
                ("decode-only endpoint", ceiling) if ceiling else None,
            )
        )
        fixed = figures["fixed_rate"]
        rows.append(
            _row(
                f"p99 ack at {fixed['offered_events_per_s']:,.0f} events/s offered, {driver}",
                fixed["p99_ms"],
                "ms",
                targets["p99_ms"],
                False,
                None,
            )
        )
        if (e2e := figures.get("end_to_end")) is not None:
            rows.append(
                _row(
                    f"end to end into the lake, {driver}",
                    e2e["events_per_s"],
                    "events/s",
                    targets["end_to_end"],
                    True,
                    None,
                )
            )
    return rows


def worker_rows(results: list[dict]) -> list[dict]:
    one = next((r for r in results if r["workers"] == 1), None)
    rows = []
    for r in results:
        rows.append(
            _row(
                f"pipeline worker(s) alone, {r['workers']} process(es)",
                r["events_per_s"],
                "events/s",
                None,
                True,
                ("1 worker process", one["events_per_s"]) if one is not None and r is not one else None,
            )
        )
        rows.append(
            _row(f"worker CPU per event, {r['workers']} process(es)", r["cpu_us_per_event"], "µs", 100, False, None)
        )
    return rows


def analytics_rows(report: dict) -> list[dict]:
    rows = []
    for name, q in report["queries"].items():
        peer = ("ClickHouse (chdb)", q["chdb_s"]) if q.get("chdb_s") else None
        rows.append(_row(f"analytics uncached: {name}", q["uncached_s"], "s", q["target_s"], False, peer))
    rows.append(
        _row(
            f"analytics peak memory, projected to 100 M events (measured {report['peak_mb']:,.0f} MB at "
            f"{report['events']:,} events)",
            report["peak_mb_projected_100m"],
            "MB",
            report["peak_mb_target_100m"],
            False,
            None,
        )
    )
    return rows


def render(rows: list[dict]) -> str:
    def number(value: float | None) -> str:
        if value is None:
            return ""
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"

    lines = [
        f"{'figure':<74} {'measured':>12} {'unit':<9} {'target':>10} {'':<6} {'peer (same run)':<22} {'peer':>10} "
        f"{'x peer':>7}"
    ]
    for r in rows:
        target = "" if r["target"] is None else ("≥ " if r["higher_is_better"] else "≤ ") + number(r["target"])
        met = "" if r["met"] is None else ("ok" if r["met"] else "MISSED")
        ratio = "" if r["ratio_to_peer"] is None else f"{r['ratio_to_peer']:.2f}"
        lines.append(
            f"{r['figure'][:74]:<74} {number(r['value']):>12} {r['unit']:<9} {target:>10} {met:<6} "
            f"{(r['peer'] or ''):<22} {number(r['peer_value']):>10} {ratio:>7}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases and 1 M analytics events")
    parser.add_argument("--events", type=int, default=None, help="analytics events (default 10 M, 1 M with --quick)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    args = parser.parse_args()
    seconds = "5" if args.quick else "10"
    events = args.events or (1_000_000 if args.quick else 10_000_000)
    rows = ingest_rows(run_json("ingest.py", "--seconds", seconds))  # type: ignore[arg-type]
    rows += worker_rows(run_json("worker.py", "--events", "20000" if args.quick else "40000"))  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="livora-bench-") as folder:
        report = run_json(
            "analytics.py", "--events", str(events), "--users", str(max(1, events // 10)), "--dir", folder
        )
    rows += analytics_rows(report)  # type: ignore[arg-type]
    print(json.dumps(rows) if args.json else render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
