"""The browser SDK end to end: headless Chromium loads the built script from a page on 127.0.0.1 and
sends to a live cell; the pipeline writes the lake. Outages, reloads and two tabs lose or repeat nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from control_plane.sources.schemas import SourceCreate
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, HttpConfigFetcher
from data_plane.stream.log import LogStream
from tests.support.browser import Browser, PageServer, PinnedServer, require_browser
from tests.support.cell import SECRET, Cell, drain, lake_rows

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

OPTIONS = "{flushAt: 10, flushInterval: 800, retryBaseDelay: 200, maxRetryDelay: 1000}"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Storefront</title></head>
<body><h1>Storefront</h1>
<script>
  if (location.search.indexOf("nolocks") >= 0) delete Navigator.prototype.locks;
  // The loading snippet: calls made before the script arrives are recorded, then replayed by it.
  window.livora = window.livora || [];
  ["load", "track", "identify", "page"].forEach(function (m) {
    livora[m] = function () { livora.push([m].concat([].slice.call(arguments))); };
  });
  livora.load(%(key)s, Object.assign(%(options)s, {
    host: %(host)s,
    // Remember every event the page made (one localStorage item each: tabs never overwrite each other).
    beforeSend: function (e) { localStorage.setItem("e2e:" + e.messageId, e.type); }
  }));
  livora.page();
</script>
<script src="/livora.min.js"></script>
</body></html>
"""

QUEUED = "window.livora.queue ? window.livora.queue.size() : -1"
RECORDED = "Object.keys(localStorage).filter(k => k.startsWith('e2e:')).map(k => k.slice(4))"


def wait_for(check: Callable[[], Any], timeout: float = 20, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def track(browser: Browser, tab: str, count: int, name: str) -> list[str]:
    """``count`` track calls in the tab; their message ids once each is queued."""
    return browser.eval(
        tab,
        f"Promise.all(Array.from({{length: {count}}}, (_, i) => livora.track({json.dumps(name)}, {{i}})))"
        ".then(events => events.map(e => e.messageId))",
    )


def start_cell(cell: Cell, port: int = 0) -> PinnedServer:
    """A cell server over the fixture's settings and stream, on ``port`` (0: a free one)."""
    keeper = ConfigKeeper(
        HttpConfigFetcher(cell.control_plane.url, SECRET, timeout=1), cell.settings.config_cache_path, interval=0.2
    )
    return PinnedServer(create_cell_app(cell.settings, keeper, LogStream(cell.stream_path)), port).start()


class Site:
    """A web source whose allowed origin is a page server on 127.0.0.1, and a browser to visit it."""

    def __init__(self, cell: Cell, world: Any, aio: Callable[..., Any], build: Path) -> None:
        script = require_browser(build)
        self.cell = cell
        self._browser: Browser | None = None
        # The page's cell: one that can be stopped and started again on the same port (an outage).
        self.server: PinnedServer | None = start_cell(cell)
        self.host = self.server.url
        self.key = ""
        self.page = PageServer(script, self.html)
        self.url = f"{self.page.origin}/?utm_source=newsletter&utm_medium=email&utm_campaign=launch"
        try:

            async def create() -> str:
                async with world.runtime.services() as services:
                    source = SourceCreate(name="storefront", kind="web", allowed_origins=[self.page.origin])
                    created = await services.sources.create(world.a.id, source, None)
                return created.write_key

            self.key = aio(create())
            # The cell learns new write keys from the control plane within a poll or two.
            known = wait_for(
                lambda: (r := self._probe()).status_code == 400 and r, what="the cell to know the write key"
            )
            # A page can read Retry-After (cross-origin, it must be exposed).
            assert "retry-after" in known.headers["access-control-expose-headers"].lower()
            self._browser = Browser()
        except BaseException:
            self.close()
            raise

    @property
    def browser(self) -> Browser:
        assert self._browser is not None
        return self._browser

    def _probe(self) -> httpx.Response:
        """An empty batch from the page's origin: 400 once the key is known (401 before)."""
        return httpx.post(
            f"{self.host}/v1/batch",
            content=json.dumps({"batch": [], "writeKey": self.key}),
            headers={"Origin": self.page.origin, "Content-Type": "text/plain"},
        )

    def html(self) -> str:
        return PAGE % {"key": json.dumps(self.key), "host": json.dumps(self.host), "options": OPTIONS}

    def wait_drained(self, tab: str, timeout: float = 20) -> None:
        wait_for(lambda: self.browser.eval(tab, QUEUED) == 0, timeout, f"{tab}'s queue to be sent")

    def cell_down(self) -> None:
        assert self.server is not None
        self.server.stop()
        self.server = None

    def cell_up(self) -> None:
        assert self.server is None
        self.server = start_cell(self.cell, int(self.host.rsplit(":", 1)[1]))

    def close(self) -> None:
        if self._browser is not None:
            self._browser.quit()
        self.page.stop()
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def site(cell: Cell, world: Any, aio: Callable[..., Any], tmp_path: Path) -> Iterator[Site]:
    built = Site(cell, world, aio, tmp_path / "sdk")
    yield built
    built.close()


def lake_ids(cell: Cell, tenant_id: str) -> list[str]:
    counts = asyncio.run(drain(cell))
    assert counts["dead"] == 0
    return [row["message_id"] for row in lake_rows(cell.settings.lake_path) if row["tenant_id"] == tenant_id]


def test_every_event_lands_once_through_an_outage_and_reloads(site: Site, cell: Cell, world: Any) -> None:
    browser = site.browser
    browser.open("shop", site.url)
    # 1. Normal traffic: the page view and a few calls, sent in batches.
    first = track(browser, "shop", 23, "Product Viewed")
    identify = browser.eval("shop", "livora.identify('user-42', {plan: 'pro'}).then(e => e.messageId)")
    site.wait_drained("shop")

    # 2. The cell goes down: events queue up and the SDK backs off.
    site.cell_down()
    offline = track(browser, "shop", 15, "Added To Cart")
    retry_key = json.dumps(f"livora:{site.key}:retry")
    wait_for(
        lambda: int((browser.eval("shop", f"localStorage.getItem({retry_key}) || '0'")).split(" ")[0]) >= 2,
        what="the SDK to fail twice and back off",
    )
    # 3. A reload while the events are queued (and the cell still down) loses nothing.
    browser.reload("shop")
    offline += track(browser, "shop", 4, "After Reload")
    wait_for(lambda: browser.eval("shop", QUEUED) >= 15 + 1 + 4, what="the queue to hold every unsent event")
    # 4. The cell returns: what waited arrives.
    site.cell_up()
    site.wait_drained("shop")
    # 5. A reload mid-queue with the cell up: the page sends its last events as it goes (keepalive),
    #    the next page sends the still-queued copies again, and the pipeline keeps one of each.
    reloaded = track(browser, "shop", 6, "Checkout Started")
    assert browser.eval("shop", QUEUED) > 0
    browser.reload("shop")
    site.wait_drained("shop")
    warnings = [line for line in browser.logs("shop") if "[livora]" in line]
    recorded = set(browser.eval("shop", RECORDED))
    session = browser.eval("shop", "localStorage.getItem('livora_session')").split(" ")[0]

    assert warnings == []
    tracked = {*first, identify, *offline, *reloaded}
    assert tracked <= recorded
    # Page views: one per load (the first, and two reloads).
    assert len(recorded - tracked) == 3

    stream = Counter(event.message_id for event in cell.events())
    assert set(stream) == recorded
    # Only the events a page sent as it unloaded can have reached the cell twice.
    assert {message_id for message_id, n in stream.items() if n > 1} <= set(reloaded) | (recorded - tracked)

    ids = lake_ids(cell, world.a.id)
    assert len(ids) == len(set(ids)) == len(recorded)
    assert set(ids) == recorded

    # What the lake holds for one event: Segment's context, and the SDK's session kept by the pipeline.
    rows = [
        row
        for file in cell.settings.lake_path.rglob("*.parquet")
        for row in pq.read_table(file).to_pylist()
        if row["message_id"] == reloaded[0]
    ]
    assert len(rows) == 1
    row = rows[0]
    context = json.loads(row["context"])
    assert context["library"]["name"] == "livora-analytics.js"
    assert context["page"]["url"] == site.url
    assert context["campaign"] == {"source": "newsletter", "medium": "email", "name": "launch"}
    assert "HeadlessChrome" in context["userAgent"]
    assert row["user_id"] == "user-42"
    assert row["session_id"] == session


@pytest.mark.parametrize("locks", ["web-locks", "lease"])
def test_two_tabs_sharing_the_queue_never_send_an_event_twice(site: Site, cell: Cell, world: Any, locks: str) -> None:
    browser = site.browser
    url = site.url + ("&nolocks" if locks == "lease" else "")
    browser.open("one", url)
    browser.open("two", url)
    assert browser.eval("one", "!!navigator.locks") == (locks == "web-locks")
    start = (
        "window.__done = false; (async () => { for (let i = 0; i < %d; i++) { await livora.track(%s, {i});"
        " if (i %% 4 == 0) await new Promise(r => setTimeout(r, 15)); } window.__done = true; })(), 1"
    )

    def both_done() -> bool:
        return bool(browser.eval("one", "window.__done") and browser.eval("two", "window.__done"))

    # Both tabs busy at once: their timers and batches race for the same queue.
    browser.eval("one", start % (40, '"Tab One"'))
    browser.eval("two", start % (40, '"Tab Two"'))
    wait_for(both_done, what="both tabs to finish tracking")
    site.wait_drained("one")

    # The same through an outage: both tabs retry the shared queue when the cell returns.
    site.cell_down()
    browser.eval("one", start % (15, '"Offline One"'))
    browser.eval("two", start % (15, '"Offline Two"'))
    wait_for(both_done, what="both tabs to finish tracking")
    site.cell_up()
    site.wait_drained("one")
    site.wait_drained("two")
    recorded = set(browser.eval("one", RECORDED))

    assert len(recorded) == 2 + 2 * 40 + 2 * 15
    stream = Counter(event.message_id for event in cell.events())
    assert set(stream) == recorded
    assert [message_id for message_id, n in stream.items() if n > 1] == []
    ids = lake_ids(cell, world.a.id)
    assert len(ids) == len(set(ids)) == len(recorded)
