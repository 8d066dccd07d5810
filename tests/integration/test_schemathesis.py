"""Schemathesis over the control plane's whole OpenAPI document, as an ops admin, on SQLite and PostgreSQL.

Every operation gets generated requests (valid and invalid) against the live server; every response must be
no 5xx and conform to the document: declared status code, declared content type, body and headers matching
their schemas. A failure prints the exact request to replay (``curl`` line) and the response.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import structlog
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.server import LiveServer
from tests.support.world import PASSWORD, World

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Fixed seed and derandomized Hypothesis: the same requests on every run, so CI is stable.
SEED = 20261121
MAX_EXAMPLES = 15
# How often a path parameter takes a real id of tenant A (the rest are generated strings).
REAL_ID_PROBABILITY = 0.6
# Operations where a 401 is an answer about the request itself, not about our credential.
PUBLIC = {"Login", "AcceptInvite", "Health", "Ready"}


def _config(world: World, ids: dict[str, list[str]]) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": dict(world.platform["ops_admin"].headers),
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none", "mode": "all"},
            "phases": {
                "examples": {"enabled": False},  # the document carries no examples
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
            },
            "dictionaries": {name: {"values": values} for name, values in ids.items()},
            "parameters": {f"path.{name}": {"dictionary": name, "probability": REAL_ID_PROBABILITY} for name in ids},
            "request-timeout": 30,
            # Test credentials only: show the exact request (token, body) in the `curl` line of a failure.
            "output": {"sanitization": {"enabled": False}},
        }
    )


def _real_ids(client: httpx.Client, world: World) -> dict[str, list[str]]:
    """Ids of objects that exist, so path parameters reach the handlers' logic, not only their 404s."""
    headers = world.platform["ops_admin"].headers
    invites = []
    for url, body in (
        (f"/api/v1/tenants/{world.a.id}/invites", {"email": "invitee@example.com", "role": "viewer"}),
        ("/api/v1/platform/invites", {"email": "staff@example.com", "role": "ops_viewer"}),
    ):
        response = client.post(url, json=body, headers=headers)
        assert response.status_code == 201, response.text
        invites.append(response.json()["id"])
    return {
        "tenant_id": [world.a.id],
        # Members of A, and (for /users/{user_id}) the platform staff other than the caller.
        "user_id": [a.user_id or "" for a in world.a.members.values()]
        + [a.user_id or "" for r, a in world.platform.items() if r != "ops_admin"],
        "key_id": list(world.a.key_ids.values()),
        "invite_id": invites,
    }


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[Path]:
    """Send the server's structlog lines to a file for this test, plain JSON with plain tracebacks.

    NOTE: the live server logs from its own thread while Schemathesis suspends and resumes pytest's output
    capture around each operation's report; printing to the captured stdout then can fail with EBADF after the
    response started, which uvicorn turns into a dropped connection. A file of our own has no such race, and is
    where to look for the server-side traceback of a 5xx.
    """
    path = tmp_path / "server.log"
    previous = structlog.get_config()
    with path.open("a", buffering=1) as sink:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=structlog.PrintLoggerFactory(sink),
            cache_logger_on_first_use=False,
        )
        try:
            yield path
        finally:
            structlog.configure(**previous)


@pytest.fixture
def control_plane_schema(
    server_log: Path, server: LiveServer, world: World, client: httpx.Client, request: pytest.FixtureRequest
) -> Any:
    # NOTE: pytest 9.2 keeps a node's id in `_id`; schemathesis 4.32's lazy loader still reads and writes
    # `node._nodeid` (to name each operation's subtest). Give it the attribute; reports carry the label anyway.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    config = _config(world, _real_ids(client, world))
    return schemathesis.openapi.from_url(f"{server.url}/schema/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("control_plane_schema")


def _fresh_session(client: httpx.Client, world: World) -> str:
    admin = world.platform["ops_admin"]
    response = client.post("/api/v1/auth/login", json={"email": admin.email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case: Case, client: httpx.Client, world: World) -> None:
    admin = world.platform["ops_admin"]
    operation_id = case.operation.definition.raw.get("operationId")
    headers = None
    if operation_id == "Logout":
        # Logout ends the session that sends it: use a throwaway one, or the admin is locked out mid-run.
        # (Self-demotion and self-disabling through UpdateUser are refused by the API: 409.)
        headers = {"Authorization": f"Bearer {_fresh_session(client, world)}"}
    response = case.call(headers=headers, timeout=30)
    if response.status_code == 401 and operation_id not in PUBLIC:
        me = client.get("/api/v1/auth/me", headers=admin.headers)
        assert me.status_code == 200, (
            f"the ops admin's session stopped working after {case.as_curl_command()} "
            f"→ {response.status_code}; every later request of this run would only test 401s"
        )
    case.validate_response(response, checks=CHECKS)


def test_the_ops_admin_cannot_lock_itself_out(client: httpx.Client, world: World) -> None:
    """What the run above relies on: fuzzed UpdateUser calls on the admin's own id cannot demote or disable it."""
    admin = world.platform["ops_admin"]
    for body in ({"is_active": False}, {"platform_role": "none"}, {"platform_role": "ops_viewer"}):
        response = client.patch(f"/api/v1/users/{admin.user_id}", json=body, headers=admin.headers)
        assert response.status_code == 409, (body, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    me = client.get("/api/v1/auth/me", headers=admin.headers)
    assert me.status_code == 200 and me.json()["user"]["platform_role"] == "ops_admin", me.text
