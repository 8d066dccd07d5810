"""Ops pages over HTTP: the wizard's validation, Pattern A's pending tenant, live run progress, SSO on sign-in."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

import tests.integration.test_provisioning as provisioning_tests
from control_plane.app import create_app
from control_plane.http import SESSION_COOKIE
from control_plane.runtime import Runtime
from control_plane.settings import Settings
from control_plane.sso.schemas import SsoConnectionCreate
from tests.support.provisioning import embedded_spaces
from tests.support.server import LiveServer
from tests.support.world import World

CSRF_IN_PAGE = re.compile(r'name="_csrf" value="([0-9a-f]{64})"')


class Console:
    def __init__(self, server: LiveServer, token: str | None) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=30)
        if token:
            self.http.cookies.set(SESSION_COOKIE, token)
        page = self.http.get("/console/login" if token is None else "/console/account")
        self.csrf = CSRF_IN_PAGE.search(page.text).group(1)  # type: ignore[union-attr]

    def post(self, path: str, **data: str) -> httpx.Response:
        return self.http.post(path, data={"_csrf": self.csrf, **data})


@pytest.fixture
def ops(server: LiveServer, world: World) -> Iterator[Console]:
    console = Console(server, world.platform["ops_admin"].token)
    yield console
    console.http.close()


def test_the_wizard_says_what_is_wrong_and_keeps_what_was_typed(ops: Console) -> None:
    empty = ops.post("/console/ops/tenants", name="", plan="growth")
    assert empty.status_code == 400 and "name:" in empty.text
    assert 'value="growth" checked' in empty.text
    bad_owner = ops.post("/console/ops/tenants", name="Keeps Typing", owner_email="not an email")
    assert bad_owner.status_code == 400 and "owner_email" in bad_owner.text
    assert 'value="Keeps Typing"' in bad_owner.text
    unknown_plan = ops.post("/console/ops/tenants", name="Odd Plan", plan="platinum")
    assert unknown_plan.status_code == 400 and "plan" in unknown_plan.text


def test_provisioning_progress_is_polled_until_the_run_ends(ops: Console) -> None:
    created = ops.post("/console/ops/tenants", name="Polled Co", template="saas", plan="free")
    assert created.status_code == 303, created.text
    tenant_page = created.headers["location"]
    tenant_id = tenant_page.rsplit("/", 1)[1]
    page = ops.http.get(tenant_page)
    assert page.status_code == 200 and "Provisioning: provision" in page.text
    run_id = re.search(r"/runs/(run_[a-z0-9]+)", page.text).group(1)  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while True:
        fragment = ops.http.get(f"/console/t/{tenant_id}/runs/{run_id}", params={"poll": "1"})
        assert fragment.status_code == 200 and fragment.text.lstrip().startswith('<div id="run-body"')
        if "hx-trigger" not in fragment.text:
            break
        assert "HX-Refresh" not in fragment.headers
        assert time.monotonic() < deadline, fragment.text
        time.sleep(0.2)
    # The run ended: the page is told to reload, and then shows the tenant active.
    assert fragment.headers["hx-refresh"] == "true"
    assert "succeeded" in fragment.text
    assert "status-active" in ops.http.get(tenant_page).text
    # A run is shown only under its own tenant.
    other = ops.post("/console/ops/tenants", name="Other Co")
    other_id = other.headers["location"].rsplit("/", 1)[1]
    assert ops.http.get(f"/console/t/{other_id}/runs/{run_id}").status_code == 404


def test_a_pattern_a_tenant_waits_for_its_role_and_shows_the_trust_policy(ops: Console) -> None:
    created = ops.post("/console/ops/tenants", name="Harbour Bank", deployment_pattern="A")
    assert created.status_code == 303
    page = ops.http.get(created.headers["location"])
    assert "status-pending" in page.text and "ExternalId" in page.text and "sts:ExternalId" in page.text
    external_id = re.search(r"livora-[A-Za-z0-9_-]{20,}", page.text).group(0)  # type: ignore[union-attr]
    assert page.text.count(external_id) >= 2, "the policy names the tenant's own ExternalId"
    tenant_id = created.headers["location"].rsplit("/", 1)[1]
    wrong = ops.post(f"/console/t/{tenant_id}/provision", role_arn="my-role")
    assert wrong.status_code == 400 and "arn:aws:iam::&lt;12-digit account&gt;:role/&lt;name&gt;" in wrong.text


def test_staff_who_only_read_see_no_actions(server: LiveServer, world: World, ops: Console) -> None:
    ops.post(f"/console/t/{world.a.id}/suspend", confirm="wrong")
    viewer = Console(server, world.platform["ops_viewer"].token)
    page = viewer.http.get(f"/console/t/{world.a.id}")
    assert page.status_code == 200 and "Lifecycle" not in page.text and "New tenant" not in page.text
    tenants = viewer.http.get("/console/ops/tenants")
    assert "Onboard a tenant" not in tenants.text and "Tenant A" in tenants.text
    filtered = viewer.http.get("/console/ops/tenants", params={"q": "tenant-b", "status": "active", "plan": "growth"})
    assert "Tenant B" in filtered.text and "Tenant A" not in filtered.text
    nothing = viewer.http.get("/console/ops/tenants", params={"status": "failed"})
    assert "No tenant matches these filters." in nothing.text
    # Unknown filter values are ignored, not a 500.
    assert viewer.http.get("/console/ops/tenants", params={"status": "bogus", "plan": "x"}).status_code == 200
    viewer.http.close()


def test_sign_in_sends_sso_domains_to_their_identity_provider(
    server: LiveServer, world: World, aio: Callable[[Awaitable[Any]], Any]
) -> None:
    async def connect() -> None:
        async with world.runtime.services() as services:
            await services.sso.create(
                world.a.id,
                SsoConnectionCreate(
                    issuer="https://idp.example.com",
                    client_id="livora",
                    client_secret="s3cret-value",
                    allowed_domains=["corp-a.example"],
                ),
                None,
                may_grant_owner=True,
            )

    aio(connect())
    visitor = Console(server, None)
    page = visitor.post("/console/login", email="ana@corp-a.example", next="/console/account")
    assert page.status_code == 200 and "Continue with single sign-on" in page.text
    link = re.search(r'href="([^"]+)" data-follow', page.text).group(1)  # type: ignore[union-attr]
    assert "/api/v1/sso/start?email=ana%40corp-a.example" in link and "return_to=%2Fconsole%2Faccount" in link
    password_step = visitor.post("/console/login", email="bo@elsewhere.example")
    assert 'id="password"' in password_step.text
    visitor.http.close()


def test_the_cells_page_shows_health_and_load(ops: Console) -> None:
    page = ops.http.get("/console/ops/cells")
    assert page.status_code == 200 and "built-in" in page.text
    assert re.search(r"<meter [^>]*value=\"\d+\"", page.text)
    assert 'href="/console/ops/cells" aria-current="page"' in page.text


@pytest.fixture
def flaky_site(settings: Settings, tmp_path: Path) -> Iterator[tuple[LiveServer, Any]]:
    """A control plane whose cell can be switched to fail creating spaces (as an unreachable cell does)."""
    settings = msgspec.structs.replace(settings, provisioning_max_attempts=2, provisioning_backoff_seconds=0.05)
    runtime = Runtime.build(settings)
    spaces = provisioning_tests.FlakySpaces(embedded_spaces(tmp_path / "flaky-cell"))
    runtime.provisioner.attach_builtin_cell(spaces)
    live = LiveServer(create_app(settings, runtime)).start()
    yield live, spaces
    live.stop()


def _wait_for(console: Console, path: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while text not in (page := console.http.get(path).text):
        assert time.monotonic() < deadline, page
        time.sleep(0.1)
    return page


def test_a_failed_run_is_retried_or_rolled_back_from_the_tenant_page(
    flaky_site: tuple[LiveServer, Any], world: World
) -> None:
    live, spaces = flaky_site
    spaces.broken = True
    ops = Console(live, world.platform["ops_admin"].token)
    retried = ops.post("/console/ops/tenants", name="Flaky Retry").headers["location"]
    page = _wait_for(ops, retried, 'class="page-head"')
    page = _wait_for(ops, retried, "Retry from the failed step")
    assert "create_space: the cell at http://cell.invalid is unreachable" in page and "status-failed" in page
    run_id = re.search(r"/runs/(run_[a-z0-9]+)/retry", page).group(1)  # type: ignore[union-attr]
    # Read-only staff see the failure but not the buttons.
    viewer = Console(live, world.platform["ops_viewer"].token)
    assert "Retry from the failed step" not in viewer.http.get(retried).text
    spaces.broken = False
    answer = ops.post(f"{retried}/runs/{run_id}/retry")
    assert answer.status_code == 303 and answer.headers["location"] == retried
    _wait_for(ops, retried, '<span class="badge status-active">active</span></div>')

    spaces.broken = True
    rolled = ops.post("/console/ops/tenants", name="Flaky Rollback").headers["location"]
    page = _wait_for(ops, rolled, "Roll back")
    run_id = re.search(r"/runs/(run_[a-z0-9]+)/rollback", page).group(1)  # type: ignore[union-attr]
    assert ops.post(f"{rolled}/runs/{run_id}/rollback").status_code == 303
    page = _wait_for(ops, rolled, "Provisioning: rollback")
    page = _wait_for(ops, rolled, "Provision this tenant")
    assert "status-pending" in page and "rolled_back" in page
    # Retrying a run that is not failed says why, on the page.
    again = ops.post(f"{rolled}/runs/{run_id}/retry")
    assert again.status_code == 409 and "alert error" in again.text
    viewer.http.close()
    ops.http.close()


def test_the_overview_shows_revenue_and_cells_at_a_glance_to_who_may_read_them(
    server: LiveServer, world: World
) -> None:
    seen = {}
    for role in ("ops_admin", "ops_viewer", "finance"):
        console = Console(server, world.platform[role].token)
        page = console.http.get("/console").text
        seen[role] = ("Revenue," in page, 'id="cells-heading"' in page, 'id="recent-heading">Tenants' in page)
        if "Revenue," in page:
            assert "No finalised invoice for this period yet" in page
        if 'id="cells-heading"' in page:
            assert re.search(r"<strong>\d+ of \d+</strong> healthy; \d+ tenants? placed", page)
        console.http.close()
    assert seen == {
        "ops_admin": (True, True, True),
        "ops_viewer": (True, True, True),
        "finance": (True, False, True),
    }
