"""The certified `oidc-provider` npm package, run by Node on 127.0.0.1, and a browser-style walk through it."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

HERE = Path(__file__).parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} is not installed; the SSO end-to-end tests run a real OpenID provider on Node.js 20+"
    if IN_CI:
        pytest.fail(f"{message} (CI requires it)", pytrace=False)
    pytest.skip(message)


def _installed() -> bool:
    return (HERE / "node_modules" / "oidc-provider" / "package.json").exists()


def install() -> None:
    """`npm ci` into this folder once (the lock file pins oidc-provider). Test workers take turns."""
    if _installed():
        return
    npm = _need("npm")
    with (HERE / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():  # another worker installed it while we waited
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=300,
        )
    if result.returncode != 0:
        raise RuntimeError(f"npm ci failed in {HERE}:\n{result.stdout}\n{result.stderr}")


class NodeProvider:
    """``oidc-provider`` with the given clients and accounts; ``issuer`` is http://127.0.0.1:PORT."""

    def __init__(self, clients: list[dict[str, Any]], accounts: dict[str, dict[str, Any]] | None = None) -> None:
        self.config = {"clients": clients, "accounts": accounts or {}}
        self.issuer = ""
        self._process: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []

    def start(self) -> NodeProvider:
        node = _need("node")
        install()
        env = {**os.environ, "OIDC_CONFIG": json.dumps(self.config), "NODE_ENV": "test"}
        self._process = subprocess.Popen(
            [node, str(HERE / "provider.mjs")],
            cwd=HERE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self._process.stdout.readline() if self._process.stdout else ""
        if not line:
            self.stop()
            raise RuntimeError("oidc-provider did not start:\n" + "".join(self._stderr))
        self.issuer = json.loads(line)["issuer"]
        return self

    def _drain_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr.append(line)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()
        self._process = None


class _Form(HTMLParser):
    """The first form of a page: its action and its hidden/filled inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
            self._in_form = True
        elif tag == "input" and self._in_form and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _form(page: httpx.Response) -> _Form:
    parser = _Form()
    parser.feed(page.text)
    assert parser.action is not None, f"no form on {page.url}: {page.text[:500]}"
    return parser


def sign_in_at_provider(browser: httpx.Client, authorization_url: str, login: str) -> httpx.Response:
    """Act as the person at the provider: log in, consent, and return the redirect back to the relying party
    (not followed), the way a browser with one cookie jar gets there."""
    parts = urlsplit(authorization_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    response = browser.get(authorization_url)
    for _ in range(12):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if not location.startswith(origin + "/"):
                return response  # leaving the provider, back to the relying party
            response = browser.get(location)
            continue
        assert response.status_code == 200, f"{response.status_code} at {response.url}: {response.text[:500]}"
        form = _form(response)
        fields = dict(form.fields)
        if fields.get("prompt") == "login":
            fields.update({"login": login, "password": "any password"})
        response = browser.post(urljoin(str(response.url), form.action or ""), data=fields)
    raise AssertionError("the provider never redirected back")
