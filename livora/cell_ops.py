"""`livora reconcile` and `livora dead-letters`: a cell's books and its dead letters, from its own state."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json

from data_plane.lake.store import open_lake_store
from data_plane.ops.service import Operations
from data_plane.settings import CellSettings
from data_plane.stream.drivers import create_stream
from data_plane.usage.ledger import open_ledger
from livora.allinone import cell_stream_settings

COLUMNS = ("tenant", "hour (UTC)", "accepted", "in lake", "dead-lettered", "duplicates", "billed", "difference")


def _when(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or date-time") from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


async def _with_operations(work):  # type: ignore[no-untyped-def]
    cell = CellSettings.from_env()
    stream = create_stream(cell_stream_settings(cell))
    ledger = open_ledger(cell, stream)
    lake = open_lake_store(cell)
    try:
        return await work(Operations(stream, ledger, lake))
    finally:
        await ledger.close()
        await lake.close()
        await stream.close()


def cmd_reconcile(args: argparse.Namespace) -> int:
    books = asyncio.run(_with_operations(lambda ops: ops.reconciliation(args.tenant, args.since, args.until)))
    if args.json:
        from msgspec import json as mjson

        print(mjson.encode(books).decode())
        return 0 if books.balanced else 1
    rows = [
        (
            h.tenant_id,
            h.hour.strftime("%Y-%m-%d %H:00"),
            str(h.accepted),
            str(h.in_lake),
            str(h.dead_lettered),
            str(h.duplicates),
            str(h.billed),
            "0" if h.difference == 0 else f"{h.difference:+d}" + (" in flight" if h.difference > 0 else " MISMATCH"),
        )
        for h in books.hours
    ]
    if not rows:
        print("No events accepted or in the lake for that selection.")
        return 0
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths, strict=True))))
    for row in rows:
        print("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))))
    accepted = sum(h.accepted for h in books.hours)
    if books.balanced:
        billed = sum(h.billed for h in books.hours)
        print(
            f"balanced: all {accepted} accepted events are in the lake, dead-lettered or dropped as duplicates;"
            f" {billed} billed (each message id once)."
        )
        return 0
    open_hours = [h for h in books.hours if h.difference]
    print(
        f"not balanced in {len(open_hours)} hour(s): a positive difference is still in flight "
        "(is a worker running? `livora worker`), a negative one is a mismatch to investigate."
    )
    return 1


def cmd_dead_letters(args: argparse.Namespace) -> int:
    if args.action == "list":
        letters = asyncio.run(_with_operations(lambda ops: ops.dead_letters(args.tenant, args.limit)))
        if not letters:
            print("No dead letters.")
        for letter in letters:
            print(
                json.dumps(
                    {
                        "id": letter.id,
                        "tenant_id": letter.tenant_id,
                        "message_id": letter.message_id,
                        "reason": letter.reason,
                        "dead_lettered_at": letter.dead_lettered_at.isoformat(),
                    }
                )
            )
        return 0
    if not args.ids:
        print("livora: name the dead letters to replay (ids from `livora dead-letters list`).")
        return 2
    result = asyncio.run(_with_operations(lambda ops: ops.replay(args.ids)))
    print(
        f"Replayed {result.replayed} dead letter(s)."
        + (f" Unknown: {', '.join(result.unknown)}" if result.unknown else "")
    )
    return 0 if not result.unknown else 1


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    reconcile = commands.add_parser(
        "reconcile",
        help="per tenant and hour: accepted = in the lake + dead-lettered + duplicates (exit 1 when not balanced)",
    )
    reconcile.add_argument("--tenant", help="only this tenant id")
    reconcile.add_argument("--since", type=_when, help="from this UTC hour (ISO 8601), inclusive")
    reconcile.add_argument("--until", type=_when, help="up to this UTC hour (ISO 8601), exclusive")
    reconcile.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reconcile.set_defaults(func=cmd_reconcile)

    letters = commands.add_parser("dead-letters", help="list or replay events the pipeline gave up on")
    letters.add_argument("action", choices=["list", "replay"])
    letters.add_argument("ids", nargs="*", help="dead-letter ids to replay")
    letters.add_argument("--tenant", help="list only this tenant's")
    letters.add_argument("--limit", type=int, default=100, help="list at most this many (default 100)")
    letters.set_defaults(func=cmd_dead_letters)
