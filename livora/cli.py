"""The `livora` command: run the platform, migrate, create an ops admin, export OpenAPI."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from control_plane.settings import Settings
from kernel.errors import AppError, ConfigError

OPENAPI_DIR = Path("openapi")
BOOTSTRAP_EMAIL = "admin@livora.localhost"


def _settings() -> Settings:
    return Settings.from_env()


def _migrate(settings: Settings) -> None:
    from control_plane.db.migrate import upgrade

    upgrade(settings.database_url)


async def _count_users(settings: Settings) -> int:
    from sqlalchemy import func, select

    from control_plane.db.models import User
    from control_plane.runtime import Runtime

    runtime = Runtime.build(settings)
    try:
        async with runtime.services() as services:
            return int(await services.db.scalar(select(func.count(User.id))) or 0)
    finally:
        await runtime.close()


async def _create_admin(settings: Settings, email: str, password: str) -> str:
    from control_plane.runtime import Runtime
    from kernel.http import RequestContext, enter_request, exit_request

    runtime = Runtime.build(settings)
    token = enter_request(RequestContext(request_id=f"cli-{secrets.token_hex(6)}"))
    try:
        async with runtime.services() as services:
            user = await services.identity.create_admin(email, password)
            return user.id
    finally:
        exit_request(token)
        await runtime.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    _migrate(settings)
    print(f"Database is at the latest schema ({_redacted(settings.database_url)}).")
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    settings = _settings()
    _migrate(settings)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        generated = False
    elif args.prompt:
        password = getpass.getpass("Password (at least 12 characters): ")
        generated = False
    else:
        password = secrets.token_urlsafe(15)
        generated = True
    user_id = asyncio.run(_create_admin(settings, args.email, password))
    print(f"ops_admin {args.email} is ready (user {user_id}).")
    if generated:
        print(f"Password: {password}\nIt is shown only now; change it with POST /api/v1/auth/password.")
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from livora.openapi import DOCUMENTS

    folder = Path(args.dir)
    stale = []
    for name, render in DOCUMENTS.items():
        text = render()
        target = folder / name
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(str(target))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"Wrote {target} ({len(json.loads(text)['paths'])} paths).")
    if stale:
        print(f"{', '.join(stale)}: stale; run `livora openapi` and commit the result.", file=sys.stderr)
        return 1
    if args.check:
        print(f"The OpenAPI documents in {folder} are up to date.")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from livora.allinone import serve_all_in_one

    settings = _settings()
    if args.host or args.port:
        settings = Settings.from_env(**{k: v for k, v in (("host", args.host), ("port", args.port)) if v})
    return serve_all_in_one(
        settings, migrate=_migrate, on_ready=_banner, ensure_admin=_ensure_bootstrap_admin, workers=args.workers
    )


def cmd_cell(args: argparse.Namespace) -> int:
    from livora.allinone import serve_cell

    # The ingest processes read their settings from the environment, like this one.
    if args.host:
        os.environ["LIVORA_CELL_HOST"] = args.host
    if args.port:
        os.environ["LIVORA_CELL_PORT"] = str(args.port)
    return serve_cell(workers=args.workers)


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("between 1 and 64 processes")
    return value


def cmd_templates_list(args: argparse.Namespace) -> int:
    from tenant_templates import shipped

    catalog = shipped()
    for name in catalog.names():
        latest = catalog.get(name)
        versions = ", ".join(f"v{v}" for v in catalog.versions(name))
        print(f"{name:<14} {versions:<10} {latest.title}: {latest.description}")
    return 0


def cmd_templates_show(args: argparse.Namespace) -> int:
    from tenant_templates import shipped
    from tenant_templates.catalog import to_builtins

    name, _, version = args.name.partition("@")
    try:
        template = shipped().get(name, int(version.lstrip("v")) if version else None)
    except (KeyError, ValueError) as exc:
        print(f"livora: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    print(json.dumps(to_builtins(template), indent=2))
    return 0


def cmd_templates_validate(args: argparse.Namespace) -> int:
    from tenant_templates import Catalog, TemplateError

    try:
        catalog = Catalog.load(extra=[Path(f) for f in args.files])
    except TemplateError as exc:
        print(f"invalid template {exc.file}\n  at {exc.field}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"livora: {exc}", file=sys.stderr)
        return 1
    count = sum(1 for _ in catalog)
    print(f"{count} template versions are valid: " + ", ".join(f"{t.name} v{t.version}" for t in catalog))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from livora.allinone import run_worker

    return run_worker()


def _ensure_bootstrap_admin(settings: Settings) -> str | None:
    """Create the first ops admin when there is no user at all; its password, shown once."""
    if asyncio.run(_count_users(settings)):
        return None
    password = secrets.token_urlsafe(15)
    asyncio.run(_create_admin(settings, BOOTSTRAP_EMAIL, password))
    return password


def _banner(settings: Settings, bootstrap_password: str | None, cell_url: str) -> None:
    base = settings.base_url
    lines = [
        "",
        f"Livora control plane on {base}",
        f"  Console:  {base}/console   (sign in with your email and password, or your organisation's SSO)",
        f"  Ingestion (Segment-compatible, the built-in cell): {cell_url}/v1/batch",
        f"  API:      {base}/api/v1   (OpenAPI document: {base}/schema/openapi.json)",
        f"  Health:   {base}/health  {base}/ready",
        f"  Database: {_redacted(settings.database_url)}",
        f"  Mail:     {settings.mail_driver}"
        + (f" → {settings.outbox_path}" if settings.mail_driver == "outbox" else ""),
    ]
    if bootstrap_password:
        lines += [
            "",
            "First start: an ops admin was created. Its password is shown this once:",
            f"  email:    {BOOTSTRAP_EMAIL}",
            f"  password: {bootstrap_password}",
            f"Sign in at {base}/console and change the password on your account page; from a script:",
            f"  curl -s {base}/api/v1/auth/login -H 'Content-Type: application/json' \\",
            f'       -d \'{{"email": "{BOOTSTRAP_EMAIL}", "password": "{bootstrap_password}"}}\'',
            "",
        ]
    else:
        lines += [
            "",
            f"Sign in at {base}/console with your ops admin; `livora create-admin --email you@example.com` makes or"
            " resets one.",
        ]
        lines.append("")
    lines.append("Press Ctrl+C to stop.")
    print("\n".join(lines), flush=True)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livora",
        description="Livora: customer-intelligence platform. Settings come from LIVORA_* environment variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="migrate, then serve the platform (embedded defaults: SQLite under ./var)")
    run.add_argument("--host", help="interface to bind (default LIVORA_HOST or 127.0.0.1)")
    run.add_argument("--port", type=int, help="port to bind (default LIVORA_PORT or 8000)")
    run.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="ingest processes of the built-in cell (default 1; more need LIVORA_CELL_SECRET)",
    )
    run.set_defaults(func=cmd_run)

    cell = commands.add_parser(
        "cell",
        help="serve a standalone cell (ingestion, analytics, operations) against LIVORA_CONTROL_PLANE_URL "
        "with LIVORA_CELL_SECRET; run `livora worker` beside it for the pipeline",
    )
    cell.add_argument("--host", help="interface to bind (default LIVORA_CELL_HOST or 127.0.0.1)")
    cell.add_argument("--port", type=int, help="port to bind (default LIVORA_CELL_PORT or 8001)")
    cell.add_argument("--workers", type=_workers, default=1, help="ingest processes sharing the port (default 1)")
    cell.set_defaults(func=cmd_cell)

    worker = commands.add_parser(
        "worker", help="run a pipeline worker for a cell: stream → dedup → enrich → identity → sessions → lake"
    )
    worker.set_defaults(func=cmd_worker)

    from livora.cell_ops import add_commands as add_cell_ops

    add_cell_ops(commands)

    from livora.billing_cli import add_commands as add_billing

    add_billing(commands)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(func=cmd_migrate)

    admin = commands.add_parser("create-admin", help="create an ops_admin, or reset one's password")
    admin.add_argument("--email", required=True, help="the admin's email address")
    source = admin.add_mutually_exclusive_group()
    source.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    source.add_argument("--prompt", action="store_true", help="ask for the password (not echoed)")
    admin.set_defaults(func=cmd_create_admin)

    openapi = commands.add_parser(
        "openapi", help=f"write the OpenAPI documents (control plane, cell) to {OPENAPI_DIR}/"
    )
    openapi.add_argument("--dir", default=str(OPENAPI_DIR), help="the folder to write them to")
    openapi.add_argument("--check", action="store_true", help="exit 1 if a file differs from the code")
    openapi.set_defaults(func=cmd_openapi)

    templates = commands.add_parser("templates", help="tenant templates: list, show one, validate data files")
    template_commands = templates.add_subparsers(dest="templates_command", required=True, metavar="ACTION")
    template_commands.add_parser("list", help="every template and its versions").set_defaults(func=cmd_templates_list)
    show = template_commands.add_parser("show", help="one template, resolved (parent folded in), as JSON")
    show.add_argument("name", help="NAME or NAME@VERSION (default: the latest version)")
    show.set_defaults(func=cmd_templates_show)
    validate = template_commands.add_parser(
        "validate", help="validate the shipped templates, plus any data files given; exit 1 naming the bad field"
    )
    validate.add_argument("files", nargs="*", help="blueprint files (TOML) to check with the shipped ones")
    validate.set_defaults(func=cmd_templates_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"livora: configuration error: {exc}", file=sys.stderr)
        return 2
    except AppError as exc:
        print(f"livora: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
