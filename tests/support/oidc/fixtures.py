"""Fixtures for the SSO tests; test modules import them by name (they override the suite's `settings`/`server`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.fernet import Fernet

from control_plane.app import create_app
from control_plane.settings import Settings
from tests.support.server import LiveServer

CALLBACK = "/api/v1/sso/callback"


class _Deferred:
    """An ASGI app that is created after the server has its port (the app's public URL needs it)."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.fixture
def settings(database_url: str, backend: str, tmp_path: Path) -> Settings:
    """The suite's settings, plus what SSO needs: local issuers allowed and, on PostgreSQL, a secret key
    (on SQLite the embedded key file under the data dir is used, as in the embedded setup)."""
    return Settings(
        database_url=database_url,
        data_dir=str(tmp_path / "var"),
        cookie_secure=False,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        sso_allow_local_issuers=True,
        secret_key=Fernet.generate_key().decode() if backend == "postgres" else "",
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    """The control plane on 127.0.0.1 with its public URL set to where it really listens (redirect URIs)."""
    deferred = _Deferred()
    live = LiveServer(deferred)
    deferred.app = create_app(msgspec.structs.replace(settings, public_url=live.url))
    live.start()
    yield live
    live.stop()


@pytest.fixture
def browser(server: LiveServer) -> Iterator[httpx.Client]:
    """One browser: one cookie jar, redirects looked at rather than followed."""
    with httpx.Client(base_url=server.url, timeout=30, follow_redirects=False) as http:
        yield http
