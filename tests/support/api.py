"""Small helpers over the HTTP API and the database for integration tests."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update

from control_plane.settings import Settings
from kernel.ports.mail import read_outbox
from kernel.tenancy import dangerously_unscoped
from tests.support.world import World

INVITE_TOKEN = re.compile(r"\blvi_[A-Za-z0-9_-]{20,}")


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 problem with this status and code; return its body."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["type"] == f"urn:livora:problem:{code}"
    assert body["detail"] and body["title"]
    return body


def outbox(settings: Settings) -> list[dict[str, Any]]:
    return read_outbox(Path(settings.outbox_path))


def invite_token_for(settings: Settings, email: str) -> str:
    """The code of the latest invitation mailed to ``email``."""
    for message in reversed(outbox(settings)):
        if message["to"] == email:
            match = INVITE_TOKEN.search(message["text"])
            assert match, message["text"]
            return match.group(0)
    raise AssertionError(f"no mail to {email} in the outbox")


def set_columns(world: World, aio: Callable[[Awaitable[Any]], Any], model: Any, row_id: str, **values: Any) -> None:
    """Change a row behind the API's back (e.g. to move an expiry into the past)."""

    async def change() -> None:
        async with world.runtime.services() as services:
            with dangerously_unscoped():
                await services.db.execute(update(model).where(model.id == row_id).values(**values))
                await services.db.commit()

    aio(change())
