"""The built site in a real browser: headless Chromium (Debian's ``chromium``),
driven over the DevTools protocol, opens the home page, the API reference and
the Performance page (the plots) from a local HTTP server, and each must show
its title and its content with no console error: no ``console.error``, no
uncaught exception, no failed request (the browser's log at level "error").
A screenshot of each is kept in ``build/docs-screenshots/``.

A control page that logs an error, throws, and loads a missing image must be
caught three times, so the check cannot pass by hearing nothing.

Chromium is installed by the test bootstrap (``scripts/bootstrap.sh``) as
redis-server is; without it this test is skipped, except under CI, where it
fails (``tests/_support.py``, ``REQUIRE_SERVERS``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _docs_support import ROOT, Site
from _support import REQUIRE_C, REQUIRE_SERVERS, SITE_ELSEWHERE, unavailable

SCREENSHOTS = ROOT / "build" / "docs-screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGES = [
    # (file, screenshot, words of the title, texts the page must show, an element it must have)
    (
        "index.html",
        "home.png",
        "tallies",
        ["Exact, C-fast counters", "What it counts, and where"],
        "table",
    ),
    (
        "api.html",
        "api.png",
        "API reference",
        ["tallies.Counter", "increment", "tallies.Store"],
        "#tallies\\.Counter",
    ),
    (
        "performance.html",
        "performance.png",
        "Performance",
        ["Method", "One increment, single thread", "Recorded run"],
        "img[src$='per-call.svg']",
    ),
]


class Browser:
    """One headless Chromium, one tab, spoken to over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        import websocket  # websocket-client, from docs/requirements.txt

        self.proc = subprocess.Popen(
            [
                CHROMIUM or "chromium",
                "--headless=new",
                "--no-sandbox",  # the tests run as root
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            self.events.append(msg)

    def open(self, url: str, settle: float = 1.5) -> list[str]:
        """Load ``url``, wait for its load event and then ``settle`` seconds;
        returns every console error heard meanwhile."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading")
            self.events.append(json.loads(self.ws.recv()))
        end = time.monotonic() + settle
        self.ws.settimeout(0.2)
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                self.events.append(json.loads(self.ws.recv()))
        self.ws.settimeout(60)
        return errors(self.events)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            found.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
            )
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            found.append(
                "exception: " + d.get("exception", {}).get("description", d.get("text", ""))
            )
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            found.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}".strip())
    return found


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if CHROMIUM is None:
        unavailable(
            "chromium is not installed (apt-get install chromium)"
            + ("; the GIL leg checks the site in Chromium" if SITE_ELSEWHERE else ""),
            required=REQUIRE_SERVERS and not SITE_ELSEWHERE,
            by="CI",
        )
    try:
        import websocket  # noqa: F401
    except ImportError:
        unavailable(
            "websocket-client is not installed (docs/requirements.txt)"
            + ("; the GIL leg checks the site in Chromium" if SITE_ELSEWHERE else ""),
            required=REQUIRE_C and not SITE_ELSEWHERE,
        )
    b = Browser(tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


def test_the_console_check_hears_errors(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "control.html").write_text(
        "<!doctype html><title>control</title><img src='missing.png'>"
        "<script>console.error('logged on purpose'); no_such_function();</script>"
    )
    with serve(tmp_path) as url:
        found = browser.open(f"{url}/control.html", settle=1.0)
    assert any("logged on purpose" in e for e in found), found
    assert any("no_such_function" in e for e in found), found
    assert any("404" in e or "missing.png" in e for e in found), found


@pytest.mark.parametrize(
    ("page", "shot", "title", "texts", "selector"), PAGES, ids=[p[0] for p in PAGES]
)
def test_page_opens_in_chromium_without_console_errors(
    browser: Browser,
    site: Site,
    page: str,
    shot: str,
    title: str,
    texts: list[str],
    selector: str,
) -> None:
    with serve(site.path) as url:
        found = browser.open(f"{url}/{page}")
        assert found == [], f"{page}: console errors: {found}"
        assert title in browser.evaluate("document.title")
        text = browser.evaluate("document.body.innerText")
        for t in texts:
            assert t in text, f"{page} does not show {t!r}"
        assert browser.evaluate(f"document.querySelector({json.dumps(selector)}) !== null"), (
            selector
        )
        # every image on the page has loaded and has a size (a plot that did not load has none)
        broken = browser.evaluate(
            "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
        )
        assert broken == [], f"{page}: images that did not load: {broken}"
        # the screenshot shows the element the page is about (the plot, the reference)
        browser.evaluate(
            f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})"
        )
        time.sleep(0.3)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.screenshot(SCREENSHOTS / shot)
    assert (SCREENSHOTS / shot).stat().st_size > 10_000
