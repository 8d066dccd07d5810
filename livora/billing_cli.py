"""`livora billing …`: run the billing cycle from a scheduler, and export invoices as CSV."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import sys
from typing import Any

import msgspec

from control_plane.settings import Settings


def _now(value: str | None) -> dt.datetime:
    if not value:
        return dt.datetime.now(dt.UTC)
    moment = dt.datetime.fromisoformat(value)
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


def _period(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    year, month = (int(p) for p in value.split("-"))
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


async def _with_services(settings: Settings, work: Any) -> Any:
    from control_plane.runtime import Runtime
    from kernel.http import RequestContext, enter_request, exit_request

    runtime = Runtime.build(settings)
    token = enter_request(RequestContext(request_id=f"cli-{secrets.token_hex(6)}"))
    try:
        async with runtime.services() as services:
            return await work(services)
    finally:
        exit_request(token)
        await runtime.close()


def cmd_close_period(args: argparse.Namespace) -> int:
    from control_plane.billing.jobs import run_billing_cycle

    settings = Settings.from_env()
    now = _now(args.now)
    report = asyncio.run(_with_services(settings, lambda services: run_billing_cycle(services, now)))
    print(msgspec.json.encode(report).decode())
    return 0 if not report.push_failures else 3


def cmd_export(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    period = _period(args.period)

    async def export(services: Any) -> str:
        billing = services.billing
        method = billing.export_lines_csv if args.what == "lines" else billing.export_invoices_csv
        return str(await method(tenant_id=args.tenant, period=period, status=args.status))

    text = asyncio.run(_with_services(settings, export))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8", newline="") as fd:
            fd.write(text)
        print(f"Wrote {args.output} ({text.count(chr(10)) - 1} rows).", file=sys.stderr)
    return 0


def add_commands(commands: Any) -> None:
    billing = commands.add_parser("billing", help="billing: close periods, finalise invoices, export CSV")
    actions = billing.add_subparsers(dest="billing_command", required=True, metavar="ACTION")

    close = actions.add_parser(
        "close-period",
        help="draft the period that ended, finalise drafts past their grace period, retry payment pushes",
    )
    close.add_argument("--now", help="act as if it were this ISO 8601 time (default: now)")
    close.set_defaults(func=cmd_close_period)

    export = actions.add_parser("export", help="write invoices or invoice lines as CSV")
    export.add_argument("what", choices=["invoices", "lines"], help="invoices, or their line items")
    export.add_argument("--period", help="only this billing period, YYYY-MM")
    export.add_argument("--status", choices=["draft", "finalised", "paid", "void", "uncollectible"])
    export.add_argument("--tenant", help="only this tenant id")
    export.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    export.set_defaults(func=cmd_export)
