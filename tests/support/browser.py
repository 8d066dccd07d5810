"""Headless Chromium driven through the SDK's Node driver, and a web page that loads the built SDK."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.support.server import LiveServer

SDK = Path(__file__).resolve().parents[2] / "sdk-js"
CHROMIUM = os.environ.get("LIVORA_TEST_CHROMIUM", "/usr/bin/chromium")


def _missing(message: str) -> None:
    """Skip locally, fail under CI=true (like ``require_service``)."""
    if IN_CI:
        pytest.fail(f"{message}; CI requires it (tests never skip it under CI=true)", pytrace=False)
    pytest.skip(message)


def require_browser(out: Path) -> Path:
    """Chromium, Node and the SDK's npm packages; builds the SDK into ``out`` (each test its own copy,
    so parallel workers never see a half-written file). Returns the minified IIFE's path."""
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    if shutil.which("node") is None:
        _missing("Node.js is not installed")
    if not (SDK / "node_modules" / "playwright-core").is_dir():
        _missing("the SDK's npm packages are not installed (cd sdk-js && npm ci)")
    subprocess.run(
        ["node", "scripts/build.mjs", f"--outdir={out}"], cwd=SDK, check=True, capture_output=True, timeout=120
    )
    return out / "livora.min.js"


class BrowserError(AssertionError):
    pass


class Browser:
    """One Chromium profile (its tabs share IndexedDB, localStorage, cookies and Web Locks)."""

    def __init__(self, timeout: float = 30) -> None:
        self.timeout = timeout
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[str] = []
        self._next = 0
        self._process = subprocess.Popen(
            ["node", str(SDK / "e2e" / "browser.mjs")],
            cwd=SDK,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CHROMIUM": CHROMIUM},
            # Its own process group: Chromium's processes go with the driver if it must be killed.
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._answer(0)

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        self._stderr += self._process.stderr

    def _answer(self, id_: int) -> Any:
        try:
            answer = self._answers.get(timeout=self.timeout)
        except queue.Empty:
            raise BrowserError(f"the browser did not answer within {self.timeout} s") from None
        if answer is None:
            raise BrowserError("the browser driver exited: " + "".join(self._stderr)[-2000:])
        assert answer["id"] == id_, answer
        if not answer["ok"]:
            raise BrowserError(answer["error"])
        return answer["result"]

    def command(self, op: str, **fields: Any) -> Any:
        self._next += 1
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"id": self._next, "op": op, **fields}) + "\n")
        self._process.stdin.flush()
        return self._answer(self._next)

    def open(self, tab: str, url: str) -> None:
        self.command("open", tab=tab, url=url)

    def eval(self, tab: str, expr: str) -> Any:
        """Evaluate a JavaScript expression in the tab; a promise is awaited."""
        return self.command("eval", tab=tab, expr=expr)

    def reload(self, tab: str) -> None:
        self.command("reload", tab=tab)

    def close_tab(self, tab: str) -> None:
        self.command("close", tab=tab)

    def logs(self, tab: str) -> list[str]:
        return list(self.command("logs", tab=tab))

    def quit(self) -> None:
        try:
            self.command("quit")
        except BrowserError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()


class PageServer:
    """A site on 127.0.0.1 serving ``/`` (``html()``, read at each request) and ``/livora.min.js``."""

    def __init__(self, script: Path, html: Callable[[], str]) -> None:
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/livora.min.js":
                    body, kind = script.read_bytes(), "text/javascript"
                elif path == "/":
                    body, kind = page.html().encode(), "text/html; charset=utf-8"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.html = html
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class PinnedServer(LiveServer):
    """A live server on a given port (0: a free one): a cell restarted where its clients expect it."""

    def __init__(self, app: Any, port: int) -> None:
        super().__init__(app)
        self._socket.close()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        # CAUTION: a stopped server's accepted connections linger on its port; binding it again works
        # only if they, and so their listener, had SO_REUSEADDR too: start the first one here as well.
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"


# --- Python playwright: the console's browser tests ---------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium() -> Iterator[Any]:
    """Headless Chromium (Debian's, driven by Python playwright) for a session-scoped fixture to yield from."""
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package playwright is not installed (pip install -e '.[test]')")
    driver = sync_playwright().start()
    browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()
    driver.stop()


def serious_accessibility_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now (offline: axe ships in the package)."""
    from axe_playwright_python.sync_playwright import Axe

    violations = Axe().run(page).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
        if v["impact"] in ("serious", "critical")
    ]
