"""Every route declares who may call it and whether it is audited, is documented, and the committed spec is current."""

from __future__ import annotations

import asyncio
import csv
import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from control_plane.app import create_app
from control_plane.http import MUTATING, authorize
from control_plane.identity.principal import Principal
from control_plane.rbac.authorizer import PLATFORM, Authorizer, tenant_domain
from control_plane.rbac.roles import TENANT_ROLES
from control_plane.settings import Settings
from kernel.errors import AppError

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "control_plane" / "rbac" / "policy.csv"
# `cell`: the route is for data-plane cells and their credential (the cell contract), not people.
ACCESS_RULES = ("public", "authenticated", "permission", "cell")
# Objects no policy row names: only the platform wildcard rows (`p, ops_admin, *, *, *`) grant them.
# Listed here on purpose, so a typo in a route's permission cannot pass as "platform only".
PLATFORM_ONLY_OBJECTS = frozenset({"users"})


@dataclass(frozen=True)
class Handler:
    path: str
    method: str
    handler: HTTPRouteHandler

    @property
    def label(self) -> str:
        return f"{self.method} {self.path} ({self.handler.handler_name})"

    @property
    def opt(self) -> dict[str, Any]:
        return dict(self.handler.opt)


@pytest.fixture(scope="module")
def app() -> Litestar:
    # No database is opened: building the app only reads the routes and the policy.
    return create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))


def _is_openapi_route(path: str) -> bool:
    return path == "/schema" or path.startswith("/schema/")


def _is_automatic_options(handler: HTTPRouteHandler) -> bool:
    """Litestar adds an OPTIONS handler to every path; it is not ours to annotate (see the guard test below)."""
    return (
        set(handler.http_methods) == {"OPTIONS"}
        and not handler.include_in_schema
        and handler.fn.__name__ == "options_handler"
    )


def all_handlers(app: Litestar) -> Iterator[Handler]:
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or _is_openapi_route(route.path):
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods):
                yield Handler(route.path, method, handler)


def our_handlers(app: Litestar) -> list[Handler]:
    return [h for h in all_handlers(app) if not _is_automatic_options(h.handler)]


def _policy_rows() -> list[list[str]]:
    rows = []
    with POLICY.open() as fd:
        for row in csv.reader(fd, skipinitialspace=True):
            if row and not row[0].lstrip().startswith("#"):
                rows.append([cell.strip() for cell in row])
    return rows


def _policy_names() -> tuple[set[str], set[str]]:
    objects = {row[3] for row in _policy_rows() if row[0] == "p" and "*" not in row[3]}
    actions = {row[4] for row in _policy_rows() if row[0] == "p" and row[4] != "*"}
    return objects, actions


# --- the walk itself ----------------------------------------------------------------------


def test_the_walk_finds_the_routes(app: Litestar) -> None:
    handlers = our_handlers(app)
    ids = {h.handler.operation_id for h in handlers}
    assert len(handlers) >= 30, f"only {len(handlers)} handlers found"
    assert {"Health", "Login", "CreateTenant", "ListAuditEntries", "RotateApiKey"} <= ids
    assert not [h for h in handlers if _is_openapi_route(h.path)]
    assert _policy_names()[0] >= {"tenant", "members"}, "policy.csv was not parsed"


# --- access rules -----------------------------------------------------------------------------


def test_every_handler_declares_exactly_one_access_rule(app: Litestar) -> None:
    wrong = {}
    for h in our_handlers(app):
        declared = [rule for rule in ACCESS_RULES if rule in h.opt]
        if len(declared) != 1:
            wrong[h.label] = declared
        elif declared[0] in ("public", "authenticated") and h.opt[declared[0]] is not True:
            wrong[h.label] = f"{declared[0]}={h.opt[declared[0]]!r} (must be True)"
    assert not wrong, f"declare exactly one of opt {ACCESS_RULES}: {wrong}"


def test_permissions_name_objects_and_actions_of_the_policy(app: Litestar) -> None:
    objects, actions = _policy_names()
    wrong = {}
    for h in our_handlers(app):
        if "permission" not in h.opt:
            continue
        permission = h.opt["permission"]
        if not (isinstance(permission, tuple) and len(permission) == 2 and all(isinstance(p, str) for p in permission)):
            wrong[h.label] = f"permission must be an (object, action) tuple, not {permission!r}"
            continue
        obj, act = permission
        if obj not in objects | PLATFORM_ONLY_OBJECTS:
            wrong[h.label] = f"object {obj!r} appears in no policy row of {POLICY.name} ({sorted(objects)})"
        elif act not in actions:
            wrong[h.label] = f"action {act!r} appears in no policy row of {POLICY.name} ({sorted(actions)})"
    assert not wrong, wrong


def test_platform_only_objects_are_never_granted_to_tenant_roles() -> None:
    authorizer = Authorizer()
    objects, _ = _policy_names()
    assert not (PLATFORM_ONLY_OBJECTS & objects), "now named in policy.csv: drop it from PLATFORM_ONLY_OBJECTS"
    for obj in PLATFORM_ONLY_OBJECTS:
        for role in TENANT_ROLES:
            for act in ("read", "write"):
                assert not authorizer.role_allows(role, tenant_domain("ten_example"), obj, act), (role, obj, act)
        assert authorizer.role_allows("ops_admin", PLATFORM, obj, "write")


def _fake_connection(app: Litestar, principal: Principal | None) -> Any:
    auth = {"credential_given": principal is not None, "api_key": False}
    return SimpleNamespace(
        scope={"user": principal, "auth": auth},
        app=app,
        path_params={},
        state=SimpleNamespace(),
    )


@pytest.mark.parametrize("signed_in", [True, False], ids=["ops_admin", "anonymous"])
def test_the_guard_answers_every_handler_with_a_decision(app: Litestar, signed_in: bool) -> None:
    """The guard lets a request through or refuses it with an ``AppError`` (401/403/404); it never crashes.

    This includes the OPTIONS handler Litestar adds to every path: it carries no ``opt``, and a guard
    that raises ``RuntimeError("declares no access rule")`` turns every signed-in OPTIONS request into a 500.
    """
    principal = Principal(kind="user", id="usr_test", label="ops@example.com", platform_role="ops_admin")
    crashed = {}
    for h in all_handlers(app):
        try:
            asyncio.run(authorize(_fake_connection(app, principal if signed_in else None), h.handler))
        except AppError:
            pass
        except Exception as exc:
            crashed[h.label] = repr(exc)
    if crashed:
        first = next(iter(crashed.values()))
        pytest.fail(
            f"authorize() crashed (a 500 for the caller) on {len(crashed)} handlers, e.g. {first}:\n  "
            + "\n  ".join(crashed),
            pytrace=False,
        )


# --- audit, documentation -------------------------------------------------------------------


def test_every_mutating_route_is_audited(app: Litestar) -> None:
    missing = [h.label for h in our_handlers(app) if h.method in MUTATING and not h.opt.get("audit")]
    assert not missing, f"mutating routes without opt audit='<noun>.<verb>': {missing}"
    malformed = [
        f"{h.label}: {h.opt['audit']!r}"
        for h in our_handlers(app)
        if "audit" in h.opt and not (isinstance(h.opt["audit"], str) and h.opt["audit"].count(".") == 1)
    ]
    assert not malformed, f"audit actions are '<noun>.<verb>' strings: {malformed}"


def test_every_handler_has_a_docstring_and_an_operation_id(app: Litestar) -> None:
    wrong = {}
    for h in our_handlers(app):
        problems = []
        if not (h.handler.fn.__doc__ or "").strip():
            problems.append("no docstring (it is the API's documentation)")
        if not isinstance(h.handler.operation_id, str) or not h.handler.operation_id:
            problems.append("no operation_id")
        if problems:
            wrong[h.label] = problems
    assert not wrong, wrong


def test_operation_ids_are_unique_pascal_case(app: Litestar) -> None:
    ids = [h.handler.operation_id for h in our_handlers(app)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"operation_id used twice: {duplicates}"
    not_pascal = [i for i in ids if not (isinstance(i, str) and i[:1].isupper() and i.isalnum())]
    assert not not_pascal, f"operation ids are PascalCase verbs (CreateApiKey): {not_pascal}"


# --- the committed OpenAPI document ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["control-plane.json", "data-plane.json"])
def test_committed_openapi_document_is_current(name: str) -> None:
    from livora.openapi import DOCUMENTS

    path = ROOT / "openapi" / name
    expected = DOCUMENTS[name]()
    committed = path.read_text() if path.exists() else ""
    if committed != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    fromfile=f"{path.relative_to(ROOT)} (committed)",
                    tofile=f"{name} rendered from the code",
                )
            )[:60]
        )
        pytest.fail(
            f"{path.relative_to(ROOT)} is stale: run `livora openapi` and commit the result.\n{diff}",
            pytrace=False,
        )
