"""Real headless Chromium (Debian's) driving the site, served over real HTTP by a werkzeug
server thread, against a stack whose storage is the moto_server bucket."""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


class CountingApp:
    """WSGI middleware that counts the request body bytes the web process receives."""

    def __init__(self, app) -> None:
        self.app, self.body_bytes, self._lock = app, 0, threading.Lock()

    def __call__(self, environ, start_response):
        stream, counter = environ["wsgi.input"], self

        class Counted:
            def read(self, *args):
                data = stream.read(*args)
                with counter._lock:
                    counter.body_bytes += len(data)
                return data

            def readline(self, *args):
                data = stream.readline(*args)
                with counter._lock:
                    counter.body_bytes += len(data)
                return data

            def __iter__(self):
                return iter(self.readline, b"")

        environ["wsgi.input"] = Counted()
        return self.app(environ, start_response)


@dataclass
class Site:
    url: str
    stack: object
    counter: CountingApp
    key: str


@pytest.fixture(scope="session")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make install provides it)")
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def site(make_stack, s3_endpoint):
    """The app behind a real HTTP server; the bucket's CORS set by `release` as in production."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per request

    def start(max_upload: int | None = None, queues=("metadata", "thumbnails", "video")) -> Site:
        extra = {"MEDIAMILL_MAX_UPLOAD_BYTES": str(max_upload)} if max_upload else {}
        stack = make_stack(None, "s3", s3_endpoint, queues=queues, extra_env=extra)
        result = stack.app.test_cli_runner().invoke(args=["release"])
        assert result.exit_code == 0 and "bucket CORS lets" in result.output, result.output
        counter = CountingApp(stack.app.wsgi_app)
        stack.app.wsgi_app = counter
        port = free_port()
        server = make_server("127.0.0.1", port, stack.app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append(server)
        return Site(f"http://127.0.0.1:{port}", stack, counter, stack.create_key("alice"))

    servers: list = []
    yield start
    for server in servers:
        server.shutdown()


def new_page(browser, width: int = 1280, height: int = 800):
    """A fresh context (own cookies, storage) and page that fails on page errors."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda msg: page.errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    return page


def login(page, site: Site) -> None:
    page.goto(f"{site.url}/")
    assert page.url.startswith(f"{site.url}/login")
    page.fill("#api_key", site.key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/")


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
